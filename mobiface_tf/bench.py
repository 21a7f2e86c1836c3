"""Latency, MACs, size, delegation and memory of TFLite face-embedding networks.

Every figure that is compared is measured in the same run, on the CPU recorded with it (`cpu` in
results.json: model name and the ISA features XNNPACK dispatches on; int8 vs fp32 depends on them,
e.g. VNNI): the latencies of all models, the machine's sgemm peak (mobiface_tf.peak) and, per row,
LiteRT's own benchmark tool as a cross-check.

Timing (`litert.time_interleaved`): batch 1, LiteRT Interpreter with its default XNNPACK delegate at
`threads` threads. For one model and thread count, the .tflite files of all quantize modes are
loaded in one fresh child process and invoked round-robin, one invoke per mode per round in a newly
shuffled order, a few warm-up rounds then >= 50 timed rounds; p50 and p90 per mode. On a shared,
noisy machine timing modes one after another made the int8/fp32 ratio swing from 0.39 to 1.09
between runs; interleaving gives every mode the same conditions, so the ratio (`int8_vs_fp32`) is fair.
Cross-check: `litert-benchmark` (the ai-edge-litert wheel's tool, CompiledModel API) times each file
alone; its median is `latency_ms_p50_litert` and its verdict `fully_accelerated`.
Memory: each (model, mode, threads) is loaded alone in its own fresh child, whose VmHWM is its peak RSS.
Achieved GFLOP/s = 2 * MACs / p50; `fraction_of_peak` divides it by the float32 sgemm GFLOP/s at the
same thread count, for float32-compute rows only (see FLOAT_COMPUTE_MODES); `peak_gflops` is the
single-thread figure.

This module measures; mobiface_tf.bench_report turns the rows into results.json, results.md and latency.png.
It imports TensorFlow only inside `bench()` (for the export); the runtime side is mobiface_tf.litert.
"""
from __future__ import annotations

if __name__ == "__main__":  # `python -m mobiface_tf.bench`: the bench command (see mobiface_tf/cli.py)
    from mobiface_tf import cli

    cli.bench()


import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mobiface_tf.bench_report import PEAK_NOTE, add_ratios, finish_row, write_outputs
from mobiface_tf.litert import (MIN_RUNS, cpu_info, cpu_label, memory_in_subprocess, op_counts,
                                time_interleaved_in_subprocess)
from mobiface_tf.litert_benchmark import run_litert_benchmark

# The publisher's MobileFaceNet TFLite files, benchmarked as reference rows by `--reference` (model name =
# file stem). They are research material in ../shared/data/models, never copied into the repo.
REFERENCE_MODELS = ("mobilefacenet_insightface_fp32", "mobilefacenet_insightface_uint8")
REFERENCE_QUANTIZE = {"mobilefacenet_insightface_fp32": "none", "mobilefacenet_insightface_uint8": "uint8"}
# litert-benchmark and our interleaved p50 should agree within this on an idle machine (issue 13).
LITERT_AGREEMENT = 0.15


def latency_stats(times_ms) -> dict:
    """{"latency_ms_p50", "latency_ms_p90", "runs"} of per-invoke times in ms."""
    t = np.asarray(times_ms)
    return {"latency_ms_p50": float(np.percentile(t, 50)), "latency_ms_p90": float(np.percentile(t, 90)),
            "runs": int(t.size)}


# ---------------------------------------------------------------------------------------------
# The official benchmark_model binary
# ---------------------------------------------------------------------------------------------
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"  # numbers may print as 2.9e+06


def _key_values(text):
    return {k: float(v) for k, v in re.findall(rf"(\w+)=({_NUM})", text)}


def parse_benchmark_model(output: str) -> dict:
    """Parse the text printed by TFLite's benchmark_model (tensorflow/lite/tools/benchmark).

    Reads the "count=... avg=..." lines (the first is the warm-up, the last the timed runs), the
    "Inference timings in us:" summary, the memory footprint, the model size, the delegate's
    "Replacing N out of M node(s) ... yielding P partitions" line and, with --enable_op_profiling,
    the "Summary by node type" table of the timed runs.
    """
    out = {}
    counts = [_key_values(line) for line in output.splitlines() if re.search(r"\bcount=\d", line)
              and "Timings (microseconds)" not in line and "Memory (bytes)" not in line]
    if counts:
        out["warmup"] = counts[0] if len(counts) > 1 else None
        out["runs"] = counts[-1]
    m = re.search(rf"Inference timings in us: Init: ({_NUM}), First inference: ({_NUM}), "
                  rf"Warmup \(avg\): ({_NUM}), Inference \(avg\): ({_NUM})", output)
    if m:
        out.update(init_us=float(m[1]), first_inference_us=float(m[2]), warmup_avg_us=float(m[3]),
                   inference_avg_us=float(m[4]))
    m = re.search(rf"Memory footprint delta from the start of the tool \(MB\): init=({_NUM}) overall=({_NUM})", output)
    if m:
        out.update(memory_init_mb=float(m[1]), memory_overall_mb=float(m[2]))
    m = re.search(rf"Peak memory footprint \(MB\): init=({_NUM}) overall=({_NUM})", output)
    if m:
        out.update(peak_memory_init_mb=float(m[1]), peak_memory_overall_mb=float(m[2]))
    m = re.search(rf"The input model file size \(MB\): ({_NUM})", output)
    if m:
        out["model_size_mb"] = float(m[1])
    m = re.search(r"Replacing (\d+) out of (\d+) node\(s\) with delegate \((\w+)\) node, yielding (\d+) partitions", output)
    if m:
        out.update(delegated_nodes=int(m[1]), total_nodes=int(m[2]), delegate=m[3], partitions=int(m[4]))
    if "inference_avg_us" not in out and "runs" not in out:
        raise ValueError("no timings found in benchmark_model output (expected 'Inference timings in us:' "
                         "or 'count=... avg=...' lines); run it with --graph=MODEL.tflite")
    out["node_types"] = _node_type_summary(output)
    return out


def _node_type_summary(output):
    """Rows of the last 'Summary by node type' table (the timed runs, not the initialisation)."""
    blocks = output.split("Summary by node type")
    if len(blocks) < 2:
        return []
    rows = []
    for line in blocks[-1].splitlines()[2:]:
        cells = line.split()
        if len(cells) < 7 or not cells[1].isdigit():
            break
        rows.append({"node_type": cells[0], "count": int(cells[1]), "avg_ms": float(cells[2]),
                     "avg_pct": float(cells[3].rstrip("%")), "times_called": int(float(cells[6]))})
    return rows


def run_benchmark_model(binary, tflite, threads: int, runs: int = MIN_RUNS, profile: bool = False) -> dict:
    """Run the official benchmark_model binary on one .tflite and parse what it prints."""
    binary = Path(binary)
    if not binary.is_file() or not os.access(binary, os.X_OK):
        raise ValueError(f"--benchmark_model={str(binary)!r} is not an executable file; pass the path to "
                         "TFLite's benchmark_model binary")
    cmd = [str(binary), f"--graph={tflite}", f"--num_threads={threads}", f"--num_runs={runs}",
           "--warmup_runs=5", f"--enable_op_profiling={'true' if profile else 'false'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return parse_benchmark_model(proc.stdout + "\n" + proc.stderr)


# ---------------------------------------------------------------------------------------------
# The whole bench
# ---------------------------------------------------------------------------------------------
def _timed_group(rows, paths, threads, warmup, runs, litert_benchmark=True, log=print):
    """Time `paths` interleaved (one child), their memory one child each, fill `rows`; return the times.

    With litert_benchmark, each file is also timed alone by `litert-benchmark` (its own fresh process):
    row["latency_ms_p50_litert"] (its median, ms), row["fully_accelerated"], row["litert_vs_p50"]
    (its median / our p50) and the whole parsed output in row["litert_benchmark"].
    """
    times = time_interleaved_in_subprocess(paths, threads, warmup, runs)
    for row, path, t in zip(rows, paths, times):
        row.update(latency_stats(t))
        row.update(memory_in_subprocess(path, threads, warmup))
        row["num_ops"] = sum(op_counts(Path(path).read_bytes()).values())
        if litert_benchmark:
            lb = run_litert_benchmark(path, threads, max(runs, 2), warmup)
            row.update(latency_ms_p50_litert=lb["median_ms"], fully_accelerated=lb["fully_accelerated"],
                       litert_vs_p50=round(lb["median_ms"] / row["latency_ms_p50"], 3), litert_benchmark=lb)
            if abs(row["litert_vs_p50"] - 1) > LITERT_AGREEMENT:
                log(f"warning: {row['model']} {row['quantize']} x{threads}: litert-benchmark median "
                    f"{lb['median_ms']:.2f} ms vs our p50 {row['latency_ms_p50']:.2f} ms (ratio "
                    f"{row['litert_vs_p50']:.2f}, outside 1 +- {LITERT_AGREEMENT}); is the machine idle?")
    return times


def reference_files(reference_dir) -> list:
    """The REFERENCE_MODELS .tflite files present in `reference_dir` (e.g. ../shared/data/models), as Paths."""
    folder = Path(reference_dir)
    return [folder / f"{name}.tflite" for name in REFERENCE_MODELS if (folder / f"{name}.tflite").is_file()]


@dataclass
class BenchOptions:
    """How `bench` exports and times; the defaults are the bench command's.

    calibration: image dir or TFRecord glob of real aligned faces for int8 and for re-estimating the
      BN statistics of the random-init networks; None -> synthetic noise images (the rows say so).
    num_calibration: how many calibration faces (or noise images) to use.
    parity_images: source of real faces for the Keras-vs-TFLite cosine column (None -> no column);
      num_parity: how many.
    runs, warmup: timed and warm-up rounds of the interleaved timing (runs >= 1, warmup >= 0).
    extra_tflite: more .tflite files, timed together as rows named by their file stem.
    benchmark_model: TFLite's benchmark_model binary, also run on every file (None: not run); profile: with
      its op profile, and every row gets its file's op counts ("ops").
    bn_calibration_steps: forward passes of export.batchnorm.calibrate_batchnorm on the calibration images
      before export (0 = keep the init statistics, whose activations vanish: see mobiface_tf/export/batchnorm.py).
    reference_dir: folder holding the publisher's REFERENCE_MODELS (../shared/data/models); the ones
      present become rows (model = file stem, quantize "none" / "uint8", reference = True), timed
      interleaved with each other. A folder without them adds nothing (logged).
    litert_benchmark: also run `litert-benchmark` on every file at every thread count (see _timed_group).
    """

    calibration: str | None = None
    num_calibration: int = 100
    parity_images: str | None = None
    num_parity: int = 16
    runs: int = MIN_RUNS
    warmup: int = 5
    extra_tflite: tuple = ()
    benchmark_model: str | None = None
    profile: bool = False
    bn_calibration_steps: int = 4
    reference_dir: str | None = None
    litert_benchmark: bool = True


def _bench_files(files, heads, tails, threads, opts: BenchOptions, log, with_ratios: bool, exported: bool):
    """The one row loop: time `files` interleaved at each thread count, one row per file and count.

    Row i at T threads is {**heads[i], "threads": T, **tails[i]} plus the timing fields; with_ratios adds the
    p50 ratios to the fp32 file (add_ratios). `exported` files (our own models) log their mode and the
    litert-benchmark median too. Returns (rows, ratio summaries); finish_row is left to the caller.
    """
    rows, ratios = [], []
    for t in threads if files else ():
        group = [{**head, "threads": t, **tail} for head, tail in zip(heads, tails)]
        times = _timed_group(group, files, t, opts.warmup, opts.runs, opts.litert_benchmark, log)
        summary = add_ratios(group, times) if with_ratios else None
        if summary:
            ratios.append(summary)
        for row, path in zip(group, files):
            if opts.benchmark_model:
                row["benchmark_model"] = run_benchmark_model(opts.benchmark_model, path, t, opts.runs, opts.profile)
            rows.append(row)
            name = f"{row['model']} {row['quantize']}" if exported else row["model"]
            log(f"{name} x{t}: p50 {row['latency_ms_p50']:.2f} ms"
                + (f" (litert-benchmark {row['latency_ms_p50_litert']:.2f})" if exported and opts.litert_benchmark
                   else "")
                + f", partitions {row['partitions']}")
        if summary and "int8_vs_fp32" in summary:
            log(f"{row['model']} x{t}: int8 / fp32 p50 = {summary['int8_vs_fp32']:.2f} (interleaved)")
    return rows, ratios


def _check(models, quantize_modes, opts: BenchOptions) -> None:
    """Raise ValueError / FileNotFoundError for bad counts, modes, networks or extra files, before any work."""
    from mobiface_tf.export.convert import QUANTIZE_MODES  # TensorFlow is needed from here on anyway
    from mobiface_tf.models.zoo import resolve

    if opts.runs < 1 or opts.warmup < 0 or opts.bn_calibration_steps < 0:
        raise ValueError(f"runs must be >= 1, warmup >= 0 and bn_calibration_steps >= 0, got runs={opts.runs}, "
                         f"warmup={opts.warmup}, bn_calibration_steps={opts.bn_calibration_steps}")
    bad = [q for q in quantize_modes if q not in QUANTIZE_MODES]
    if bad:
        raise ValueError(f"unknown quantize mode(s) {bad}; expected some of {QUANTIZE_MODES}")
    missing = [str(p) for p in opts.extra_tflite if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"--extra_tflite file(s) not found: {missing}; pass existing .tflite files")
    unknown = []
    for m in models:  # names checked by the one network resolver (models.zoo.resolve) before any work
        try:
            resolve(m)
        except ValueError as e:
            unknown.append(m)
            reason = str(e).split("; ", 1)[-1]
    if unknown:
        raise ValueError(f"unknown network(s) {unknown}; {reason}")


def _meta(opts: BenchOptions, cpu, peaks, peaks_before, calib_label) -> dict:
    """results.json's "meta": the CPU, the sgemm peaks, the counts and how every figure was measured."""
    runs, warmup = opts.runs, opts.warmup
    meta = {"cpu": cpu_label(cpu), "peak_gflops_by_threads": peaks, "peak_gflops_before": peaks_before, "runs": runs, "warmup": warmup, "batch": 1,
            "calibration": calib_label, "bn_calibration_steps": opts.bn_calibration_steps, "cpu_count": os.cpu_count(),
            "timing": ("LiteRT Interpreter + default XNNPACK delegate; per (model, threads) all quantize modes "
                       "loaded in one child process and invoked round-robin, shuffled order each round, "
                       f"{warmup} warm-up + {runs} timed rounds; p50/p90 per mode; ratios from the same run"),
            "memory": "peak RSS (VmHWM) of a fresh child per (model, mode, threads): Python + LiteRT + that model",
            "fraction_of_peak": PEAK_NOTE}
    if opts.litert_benchmark:
        meta["litert_benchmark"] = (f"`litert-benchmark --model=F --num_threads=T --num_runs={max(runs, 2)} "
                                    f"--warmup_runs={warmup}` per file, alone in a fresh process (CompiledModel API, "
                                    "XNNPACK); latency_ms_p50_litert = its median, fully_accelerated = its verdict")
    return meta


def bench(models, quantize_modes, threads, output_dir, options: BenchOptions | None = None, log=print) -> dict:
    """Export every model in every mode, time them at every thread count, write the three outputs.

    For each (model, threads) all quantize modes are timed interleaved in one child process
    (`litert.time_interleaved`), so their ratios come from the same machine conditions; the peak RSS of
    each (model, mode, threads) comes from its own fresh child (`litert.memory_and_delegation`).
    `options` (BenchOptions; None: its defaults) holds the faces, counts, extra files and cross-checks.
    Returns {"rows", "ratios", "meta", "cpu", "table"}; results.json holds meta, cpu, ratios and rows.
    Raises ValueError for unknown models / modes or bad counts, FileNotFoundError for missing extra files.
    """
    opts = options if options is not None else BenchOptions()
    _check(models, quantize_modes, opts)

    import keras

    from mobiface_tf.export.batchnorm import calibrate_batchnorm
    from mobiface_tf.export.faces import load_faces
    from mobiface_tf.export.pipeline import export
    from mobiface_tf.models import count_macs
    from mobiface_tf.models.zoo import build_config
    from mobiface_tf.peak import sgemm_gflops

    output_dir = Path(output_dir)
    model_dir = output_dir / "models"
    model_dir.mkdir(parents=True, exist_ok=True)
    cpu = cpu_info()
    log(f"CPU: {cpu_label(cpu)}")
    peaks = {t: round(sgemm_gflops(threads=t), 2) for t in sorted({1, *threads})}
    log(f"sgemm peak GFLOP/s: {peaks}")

    calib, calib_label = (_calibration_images(opts) if models and ("int8" in quantize_modes or opts.bn_calibration_steps)
                          else (None, None))
    faces = load_faces(opts.parity_images, opts.num_parity, seed=1) if opts.parity_images else None

    rows, ratios = [], []
    for name in models:
        keras.utils.set_random_seed(0)
        model = build_config(name)  # random init: latency does not depend on the weights' values...
        if opts.bn_calibration_steps:  # ...but int8 needs non-vanishing activations (calibrate_batchnorm)
            calibrate_batchnorm(model, calib, steps=opts.bn_calibration_steps)
        params, macs = model.count_params(), count_macs(model)
        paths = [model_dir / f"{name}_{mode}.tflite" for mode in quantize_modes]
        tails = []
        for mode, path in zip(quantize_modes, paths):
            report = export(model, path, mode, calib, faces, enforce=False)
            tails.append({"params": params, "macs": macs, "size_bytes": report["size_bytes"], "tflite": str(path),
                          "prelu_rewrite": report["prelu_rewrite"]["enabled"], "parity": report["parity"],
                          "bn_calibration_steps": opts.bn_calibration_steps,
                          **({"calibration": calib_label} if mode == "int8" else {})})
        heads = [{"model": name, "quantize": mode} for mode in quantize_modes]
        got, got_ratios = _bench_files(paths, heads, tails, threads, opts, log, with_ratios=True, exported=True)
        rows += got
        ratios += got_ratios

    if opts.reference_dir is not None:
        refs = reference_files(opts.reference_dir)
        if not refs:
            log(f"--reference: none of {[f'{n}.tflite' for n in REFERENCE_MODELS]} in {str(opts.reference_dir)!r}; "
                "no reference rows")
        heads = [{"model": r.stem, "quantize": REFERENCE_QUANTIZE[r.stem], "reference": True} for r in refs]
        got, got_ratios = _bench_files(refs, heads, [_file_tail(r) for r in refs], threads, opts, log,
                                       with_ratios=True, exported=False)
        rows += got
        ratios += got_ratios
    extras = [Path(e) for e in opts.extra_tflite]
    got, _ = _bench_files(extras, [{"model": e.stem, "quantize": "as given"} for e in extras],
                          [_file_tail(e) for e in extras], threads, opts, log, with_ratios=False, exported=False)
    rows += got

    # The peak is the best of sgemm runs before and after the timing: one run alone may have met a busy machine.
    peaks_before = peaks
    peaks = {t: max(p, round(sgemm_gflops(threads=t), 2)) for t, p in peaks_before.items()}
    log(f"sgemm peak GFLOP/s after the timing: {peaks} (best of before and after)")
    rows = [finish_row(row, peaks) for row in rows]
    if opts.profile:
        for row in rows:
            row["ops"] = op_counts(Path(row["tflite"]).read_bytes())
    meta = _meta(opts, cpu, peaks, peaks_before, calib_label)
    table = write_outputs(rows, output_dir, meta, ratios, cpu)
    return {"rows": rows, "ratios": ratios, "meta": meta, "cpu": cpu, "table": table}


def _calibration_images(opts: BenchOptions) -> tuple[np.ndarray, str]:
    """(images uint8 [num_calibration, 112, 112, 3], label for the rows): real faces from opts.calibration,
    else seeded uniform noise, labelled as such."""
    if opts.calibration:
        from mobiface_tf.export.faces import load_faces

        return load_faces(opts.calibration, opts.num_calibration), f"real faces: {opts.calibration}"
    calib = np.random.default_rng(0).uniform(0, 255, (opts.num_calibration, 112, 112, 3)).astype(np.uint8)
    return calib, "synthetic uniform noise (no --calibration given): int8 accuracy not representative"


def _file_tail(path: Path) -> dict:
    """The row fields of a .tflite file we did not export: no params or MACs, its size and path."""
    return {"params": None, "macs": None, "size_bytes": path.stat().st_size, "tflite": str(path)}
