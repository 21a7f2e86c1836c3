"""tools/bench.py and mobiface_tf.bench: row fields, interleaved timing, ratios, outputs (with the CPU), the
litert-benchmark cross-check, the --reference rows, the benchmark_model parser, --static, bad inputs. No test asserts
a speed: ratios are reported by the bench, not tested. (LiteRT itself: tests/test_litert.py.)

The benchmark_model sample (tests/data/benchmark_model_sample.txt) follows the output format of TFLite's
benchmark tool (tensorflow/lite/tools/benchmark, documented in its README: the "count=... avg=..." lines,
"Inference timings in us: Init: ..., First inference: ..., Warmup (avg): ..., Inference (avg): ...", the
memory footprint lines and, with --enable_op_profiling=true, the "Summary by node type" tables). The binary
cannot be fetched here, so the sample is written in that documented format for a slow device (averages
of ~2.9 s print in %g form, e.g. avg=2.9e+06), as the issue asks.
"""
import json
import subprocess
import sys

import pytest

from mobiface_tf import bench, bench_report, litert

from conftest import REPO  # noqa: E402  (the repo root, one definition for every test file)
SAMPLE = REPO / "tests" / "data" / "benchmark_model_sample.txt"
ROW_FIELDS = {"model", "quantize", "threads", "params", "macs", "size_bytes", "latency_ms_p50", "latency_ms_p90",
              "partitions", "gflops_per_s", "peak_gflops", "fraction_of_peak", "undelegated_ops", "peak_rss_mb",
              "latency_ms_p50_litert", "fully_accelerated", "num_ops"}


def _tool(*args, timeout=300):
    return subprocess.run([sys.executable, str(REPO / "tools" / "bench.py"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={"TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin:/bin"})


def test_parse_benchmark_model_sample():
    out = bench.parse_benchmark_model(SAMPLE.read_text())
    assert out["inference_avg_us"] == pytest.approx(2.9e6)
    assert out["first_inference_us"] == pytest.approx(3.01245e6)
    assert out["init_us"] == 412830
    assert out["warmup"]["count"] == 5 and out["warmup"]["avg"] == pytest.approx(2.92521e6)
    assert out["runs"]["count"] == 50 and out["runs"]["min"] == pytest.approx(2.8812e6)
    assert out["memory_overall_mb"] == pytest.approx(124.512)
    assert out["model_size_mb"] == pytest.approx(60.6148)
    assert (out["delegated_nodes"], out["total_nodes"], out["partitions"]) == (94, 94, 1)
    # The node-type summary of the timed runs, not the initialisation one.
    assert out["node_types"] == [{"node_type": "TfLiteXNNPackDelegate", "count": 1, "avg_ms": 2899.402,
                                  "avg_pct": 100.0, "times_called": 1}]


def test_parse_benchmark_model_rejects_other_text():
    with pytest.raises(ValueError, match="no timings found"):
        bench.parse_benchmark_model("ERROR: Could not open 'x.tflite'.\n")


def test_benchmark_model_binary_must_exist(tmp_path):
    with pytest.raises(ValueError, match="not an executable file"):
        bench.run_benchmark_model(tmp_path / "nope", tmp_path / "m.tflite", 1)


def test_markdown_ratio_and_peak_fraction_only_for_float_compute():
    rows = [{"model": "m", "quantize": q, "threads": 1, "latency_ms_p50": p, "macs": 2e8, "undelegated_ops": {}}
            for q, p in (("none", 10.0), ("float16", 10.0), ("int8", 4.0), ("dynamic", 5.0))]
    rows = [bench_report.finish_row(r, {1: 40.0}) for r in rows]
    assert rows[0]["gflops_per_s"] == pytest.approx(40.0) and rows[0]["fraction_of_peak"] == pytest.approx(1.0)
    assert rows[1]["fraction_of_peak"] == pytest.approx(1.0)  # fp16 computes in fp32 on x86 XNNPACK
    assert rows[2]["gflops_per_s"] == pytest.approx(100.0)  # still reported...
    assert rows[2]["fraction_of_peak"] is None and rows[3]["fraction_of_peak"] is None  # ...but not vs an fp32 peak
    assert bench_report.ratio(rows, "m") == pytest.approx(0.4)
    table = bench_report.markdown_table(rows)
    assert table.splitlines()[0].startswith("| model | quantize | threads")
    assert len(table.splitlines()) == 6
    assert table.splitlines()[4].split("|")[-2].strip() == "-"  # int8 "of fp32 peak" cell is empty


def test_add_ratios_p50_and_paired():
    group = [{"model": "m", "threads": 2, "quantize": q} for q in ("int8", "none")]
    times = [[1.0, 2.0, 9.0], [4.0, 4.0, 10.0]]  # int8 first: the fp32 reference need not be first
    for row, t in zip(group, times):
        row.update(bench.latency_stats(t))
    summary = bench_report.add_ratios(group, times)
    assert summary == {"model": "m", "threads": 2, "int8_vs_fp32": 0.5, "int8_vs_fp32_paired": 0.5}
    assert group[0]["p50_vs_fp32"] == 0.5 and group[1]["p50_vs_fp32"] == 1.0
    assert bench_report.add_ratios(group[:1], times[:1]) is None  # no fp32 row, no ratio


def test_interleaved_timing_and_separate_memory(reference_tflite, reference_tflite_uint8):
    """The real child processes: interleaved times for two models, RSS of one model alone."""
    times = litert.time_interleaved_in_subprocess([reference_tflite, reference_tflite_uint8], 1, 1, 4)
    assert len(times) == 2 and all(len(t) == 4 and min(t) > 0 for t in times)
    mem = litert.memory_in_subprocess(reference_tflite, 1, 1)
    assert 10 < mem["peak_rss_mb"] < 2000 and mem["partitions"] >= 1


@pytest.mark.slow
def test_bench_end_to_end_small(tmp_path, lfw_dir):
    """One real export per mode, timed interleaved (few rounds): every JSON row has the contracted fields."""
    opts = bench.BenchOptions(calibration=lfw_dir, num_calibration=8, parity_images=lfw_dir, num_parity=4, runs=3,
                              warmup=1, bn_calibration_steps=1)
    result = bench.bench(["mobilefacenet"], ["none", "int8"], [1], tmp_path, opts, log=lambda s: None)
    data = json.loads((tmp_path / "results.json").read_text())
    md = (tmp_path / "results.md").read_text()
    assert md.startswith(f"CPU: {data['cpu']['model']} (") and "\n| model |" in md
    assert data["cpu"]["isa"] == result["cpu"]["isa"] and isinstance(data["cpu"]["isa"], list)
    assert (tmp_path / "latency.png").stat().st_size > 1000
    assert len(data["rows"]) == 2
    for row in data["rows"]:
        assert ROW_FIELDS <= set(row), ROW_FIELDS - set(row)
        assert row["partitions"] == 1 and row["undelegated_ops"] == {}
        assert row["latency_ms_p90"] >= row["latency_ms_p50"] > 0 and row["runs"] == 3
        assert 10 < row["peak_rss_mb"] < 2000
        assert row["fully_accelerated"] is True and row["latency_ms_p50_litert"] > 0
        assert row["litert_benchmark"]["num_runs"] == 3
    fp32, int8 = data["rows"]
    assert data["meta"]["peak_gflops_by_threads"]["1"] == fp32["peak_gflops"] > 0
    # A fraction of the sgemm peak, or (on a busy machine, where the row beat the peak) the "under load" note.
    assert (fp32["fraction_of_peak"] is not None and 0 < fp32["fraction_of_peak"] <= 1) or \
        (fp32["fraction_of_peak"] is None and fp32["fraction_of_peak_note"] == bench_report.PEAK_UNDER_LOAD)
    assert int8["fraction_of_peak"] is None
    assert "real faces" in int8["calibration"]
    assert data["ratios"] == [{"model": "mobilefacenet", "threads": 1, "int8_vs_fp32": int8["p50_vs_fp32"],
                               "int8_vs_fp32_paired": data["ratios"][0]["int8_vs_fp32_paired"]}]
    assert int8["p50_vs_fp32"] == pytest.approx(int8["latency_ms_p50"] / fp32["latency_ms_p50"], abs=1e-3)
    assert md.startswith(result["table"])
    assert "int8 / fp32" in (tmp_path / "results.md").read_text()


def test_reference_rows_cli(tmp_path, reference_tflite, reference_tflite_uint8):
    """--reference adds the publisher's two TFLite files as rows, each cross-checked by the real litert-benchmark;
    results.json carries the CPU. Its verdicts match our partition counts (fp32: 1; uint8: MAXIMUM/MINIMUM left out)."""
    proc = _tool("--reference", f"--reference_dir={reference_tflite.parent}", "--models=", "--quantize=none",
                 "--threads=1", "--runs=3", "--warmup=1", f"--output_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("CPU: ")
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["cpu"] == litert.cpu_info()
    assert [(r["model"], r["quantize"]) for r in data["rows"]] == [("mobilefacenet_insightface_fp32", "none"),
                                                                  ("mobilefacenet_insightface_uint8", "uint8")]
    fp32, uint8 = data["rows"]
    for row in data["rows"]:
        assert ROW_FIELDS - {"params", "macs", "gflops_per_s", "fraction_of_peak"} <= {k for k, v in row.items() if v is not None}
        assert row["reference"] is True and row["latency_ms_p50_litert"] > 0
    assert (fp32["fully_accelerated"], fp32["partitions"]) == (True, 1)
    assert uint8["fully_accelerated"] is False and uint8["undelegated_ops"]["MAXIMUM"] > 0
    assert fp32["num_ops"] > 200  # PReLU as MAXIMUM/MINIMUM/MUL/ADD plus explicit PADs (our export: ~100)
    assert data["ratios"][0]["uint8_vs_fp32"] == uint8["p50_vs_fp32"]
    assert "| mobilefacenet_insightface_uint8 | uint8 | 1 |" in (tmp_path / "results.md").read_text()


def test_reference_folder_without_the_files_adds_no_rows(tmp_path):
    proc = _tool("--reference", f"--reference_dir={tmp_path}", "--models=", "--quantize=none", "--threads=1",
                 f"--output_dir={tmp_path / 'out'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["rows"] == []


@pytest.mark.slow
def test_static_table_cli():
    proc = _tool("--static", "--models=mobiface_gdc,mobilefacenet")
    assert proc.returncode == 0, proc.stderr
    lines = [l for l in proc.stdout.splitlines() if l.startswith("|")]
    assert lines[0].startswith("| model | params")
    assert "| mobiface_gdc | 2,597,120 |" in lines[2] and "| mobilefacenet | 1,022,720 |" in lines[3]


@pytest.mark.parametrize("args, message", [
    (["--static", "--models=nonet"], "unknown network 'nonet'"),
    (["--quantize=int4", "--models=mobiface_gdc"], "unknown quantize mode"),
    (["--models=nonet", "--quantize=none"], "unknown network(s) ['nonet']"),
    (["--extra_tflite=/nonexistent/x.tflite", "--models=", "--quantize=none", "--threads=1"], "/nonexistent/x.tflite"),
])
def test_bad_inputs_one_line_error(tmp_path, args, message):
    proc = _tool(*args, f"--output_dir={tmp_path}")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and message in last


def test_fraction_of_peak_never_exceeds_one():
    """A row faster than the sgemm peak means the peak met a busy machine: no '>100%', a note instead."""
    row = bench_report.finish_row({"model": "m", "quantize": "none", "threads": 1, "latency_ms_p50": 4.0, "macs": 2e8,
                            "undelegated_ops": {}}, {1: 80.0})  # 100 GFLOP/s achieved vs an 80 GFLOP/s peak
    assert row["fraction_of_peak"] is None and row["fraction_of_peak_note"] == bench_report.PEAK_UNDER_LOAD
    assert bench_report.PEAK_UNDER_LOAD in bench_report.markdown_table([row])
    row = bench_report.finish_row(row, {1: 120.0})  # recomputed with the best of before/after: a real fraction again
    assert row["fraction_of_peak"] == pytest.approx(100 / 120, abs=1e-3) and "fraction_of_peak_note" not in row
