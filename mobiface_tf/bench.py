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

This module imports TensorFlow only inside `bench()` (for the export); the runtime side is mobiface_tf.litert.
"""
from __future__ import annotations

if __name__ == "__main__":  # `python -m mobiface_tf.bench`: the bench command (see mobiface_tf/cli.py)
    from mobiface_tf import cli

    cli.bench()


import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np

from mobiface_tf.litert import (MIN_RUNS, cpu_info, cpu_label, delegation, make_interpreter,  # noqa: F401
                                 memory_and_delegation, memory_in_subprocess, op_counts, peak_rss_kb,
                                 run_litert_benchmark, time_interleaved, time_interleaved_in_subprocess)

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
# Rows and tables
# ---------------------------------------------------------------------------------------------
# The sgemm peak is a float32 figure, so only rows that compute in float32 are compared with it.
# float16 counts as float32: on x86 LiteRT's XNNPACK delegate expands the fp16 weights to fp32 when
# it takes over their DEQUANTIZE nodes and computes in fp32 (fp16 arithmetic needs ARM FP16 or
# AVX512-FP16 and an explicit delegate flag). int8 and dynamic-range rows use integer dot products
# that do several times more operations per instruction, so "fraction of an fp32 peak" means nothing
# for them: their fraction_of_peak is None.
FLOAT_COMPUTE_MODES = ("none", "float16")
PEAK_NOTE = ("fraction_of_peak = achieved GFLOP/s (2 x MACs / p50) / numpy float32 sgemm GFLOP/s at the same "
             "thread count, given only for float32 compute (none, float16: LiteRT's XNNPACK on x86 expands fp16 "
             "weights to fp32 and computes in fp32). int8/dynamic rows use integer dot products, so a fraction "
             "of a float32 peak is meaningless there and is left empty. The peak is the best of the sgemm runs "
             "before and after the timing; a row that still beats it gets no fraction but the note 'peak measured "
             "under load' (fraction_of_peak_note), so no fraction exceeds 100%.")


PEAK_UNDER_LOAD = "peak measured under load"


def finish_row(row: dict, peaks: dict) -> dict:
    """Add achieved GFLOP/s (2 x MACs / p50) and, for float32-compute rows, the fraction of the sgemm peak.

    A fraction is never above 1: a row that beats the peak shows that the peak was measured while the machine
    was busy, so its fraction is None and `fraction_of_peak_note` says PEAK_UNDER_LOAD (table cell too).
    """
    macs, p50 = row.get("macs"), row.get("latency_ms_p50")
    row["peak_gflops"] = peaks[1]
    row["gflops_per_s"] = round(2 * macs / (p50 * 1e-3) / 1e9, 2) if macs and p50 else None
    float_compute = row.get("quantize") in FLOAT_COMPUTE_MODES
    fraction = (round(row["gflops_per_s"] / peaks[row["threads"]], 3)
                if float_compute and row["gflops_per_s"] else None)
    row.pop("fraction_of_peak_note", None)
    if fraction is not None and fraction > 1.0:
        fraction, row["fraction_of_peak_note"] = None, PEAK_UNDER_LOAD
    row["fraction_of_peak"] = fraction
    return row


def add_ratios(group: list, times: list) -> dict | None:
    """Ratios of every mode to fp32 within one interleaved run (one model, one thread count).

    Sets row["p50_vs_fp32"] = p50(mode) / p50(fp32) on each row of `group` and returns the summary
    {model, threads, int8_vs_fp32, ...}, where X_vs_fp32 is the p50 ratio and X_vs_fp32_paired the
    median of the per-round ratios (both models timed in the same round). None without an fp32 row.
    """
    modes = [r["quantize"] for r in group]
    if "none" not in modes:
        return None
    ref = modes.index("none")
    summary = {"model": group[0]["model"], "threads": group[0]["threads"]}
    for j, row in enumerate(group):
        row["p50_vs_fp32"] = round(row["latency_ms_p50"] / group[ref]["latency_ms_p50"], 3)
        if j != ref:
            summary[f"{modes[j]}_vs_fp32"] = row["p50_vs_fp32"]
            paired = np.median(np.asarray(times[j]) / np.asarray(times[ref]))
            summary[f"{modes[j]}_vs_fp32_paired"] = round(float(paired), 3)
    return summary


COLUMNS = [  # (header, key, format)
    ("model", "model", "{}"), ("quantize", "quantize", "{}"), ("threads", "threads", "{}"),
    ("params", "params", "{:,}"), ("MMACs", "macs", "{:.0f}"), ("size MB", "size_bytes", "{:.2f}"),
    ("p50 ms", "latency_ms_p50", "{:.2f}"), ("p90 ms", "latency_ms_p90", "{:.2f}"),
    ("p50 / fp32", "p50_vs_fp32", "{:.2f}"), ("litert-benchmark ms", "latency_ms_p50_litert", "{:.2f}"),
    ("ops", "num_ops", "{}"), ("partitions", "partitions", "{}"), ("fully accel.", "fully_accelerated", "{}"), ("undelegated", "undelegated_ops", "{}"),
    ("GFLOP/s", "gflops_per_s", "{:.1f}"), ("of fp32 peak", "fraction_of_peak", "{:.1%}"),
    ("RSS MB", "peak_rss_mb", "{:.0f}"), ("cos min/mean", "parity", "{}"),
]
RATIO_COLUMNS = [("model", "model", "{}"), ("threads", "threads", "{}"), ("int8 / fp32 (p50)", "int8_vs_fp32", "{:.2f}"),
                 ("int8 / fp32 (median per round)", "int8_vs_fp32_paired", "{:.2f}"),
                 ("fp16 / fp32", "float16_vs_fp32", "{:.2f}"), ("dynamic / fp32", "dynamic_vs_fp32", "{:.2f}"),
                 ("uint8 / fp32 (published)", "uint8_vs_fp32", "{:.2f}")]


def _cell(row, key, fmt):
    value = row.get(key)
    if value is None and key == "fraction_of_peak" and row.get("fraction_of_peak_note"):
        return row["fraction_of_peak_note"]
    if value is None:
        return "-"
    if key == "macs":
        return fmt.format(value / 1e6)
    if key == "size_bytes":
        return fmt.format(value / 1e6)
    if key == "undelegated_ops":
        return ", ".join(f"{k} x{v}" for k, v in value.items()) or "none"
    if key == "fully_accelerated":
        return "yes" if value else "no"
    if key == "parity":
        return f"{value['cosine_min']:.4f} / {value['cosine_mean']:.4f}"
    return fmt.format(value)


def markdown_table(rows, columns=COLUMNS) -> str:
    """Markdown table of `rows` (dicts) with the (header, key, format) `columns` that some row has a value for."""
    columns = [c for c in columns if any(r.get(c[1]) is not None or _cell(r, c[1], c[2]) != "-" for r in rows)]
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r, k, f) for _, k, f in columns) + " |" for r in rows]
    return "\n".join(lines)


STATIC_COLUMNS = [("model", "model", "{}"), ("params", "params", "{:,}"), ("trainable", "trainable_params", "{:,}"),
                  ("MMACs", "macs", "{:.0f}"), ("fp32 MB (4 B/param)", "fp32_mb", "{:.2f}"),
                  ("embedding", "embedding_dim", "{}")]


def static_table(names) -> tuple[list, str]:
    """params / MACs / sizes of zoo configurations, no conversion, no timing."""
    from mobiface_tf.models.zoo import static_row

    rows = [static_row(name) for name in names]
    return rows, markdown_table(rows, STATIC_COLUMNS)


def latency_chart(rows, path) -> None:
    """Bar chart of p50 latency per model x quantize mode, one group per thread count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    modes = list(dict.fromkeys(r["quantize"] for r in rows))
    threads = sorted({r["threads"] for r in rows}) or [1]  # no rows: one empty panel
    fig, axes = plt.subplots(1, len(threads), figsize=(6 * len(threads), 4), squeeze=False)
    width = 0.8 / max(len(modes), 1)
    for ax, t in zip(axes[0], threads):
        for j, mode in enumerate(modes):
            values = [next((r["latency_ms_p50"] for r in rows if r["model"] == m and r["quantize"] == mode
                            and r["threads"] == t), np.nan) for m in models]
            ax.bar(np.arange(len(models)) + j * width, values, width, label=mode)
        ax.set_xticks(np.arange(len(models)) + width * (len(modes) - 1) / 2)
        ax.set_xticklabels(models, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("p50 latency (ms), batch 1")
        ax.set_title(f"{t} thread{'s' if t > 1 else ''} (modes interleaved per model)")
        if modes:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(rows, output_dir, meta: dict, ratios=(), cpu: dict | None = None) -> str:
    """DIR/results.json, DIR/results.md, DIR/latency.png; returns the Markdown text (CPU line, tables).

    cpu: litert.cpu_info() of the machine that measured the rows (None: this machine's). results.json
    gets it as the top-level "cpu" {model, isa, ...}; results.md and the returned text start with it.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    cpu = cpu_info() if cpu is None else cpu
    table = f"CPU: {cpu_label(cpu)}\n\n" + markdown_table(rows)
    if ratios:
        table += "\n\nRatios to fp32 within the same interleaved run:\n\n" + markdown_table(list(ratios), RATIO_COLUMNS)
    (output_dir / "results.json").write_text(json.dumps({"cpu": cpu, "meta": meta, "ratios": list(ratios), "rows": rows},
                                                        indent=2))
    notes = "\n".join(f"- {k}: {v}" for k, v in meta.items())
    (output_dir / "results.md").write_text(table + "\n\n" + notes + "\n")
    latency_chart(rows, output_dir / "latency.png")
    return table


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


def bench(models, quantize_modes, threads, output_dir, calibration=None, num_calibration=100,
          parity_images=None, num_parity=16, runs=MIN_RUNS, warmup=5, extra_tflite=(),
          benchmark_model=None, profile=False, bn_calibration_steps=4, log=print, reference_dir=None,
          litert_benchmark=True) -> dict:
    """Export every model in every mode, time them at every thread count, write the three outputs.

    For each (model, threads) all quantize modes are timed interleaved in one child process
    (`litert.time_interleaved`), so their ratios come from the same machine conditions; the peak RSS of
    each (model, mode, threads) comes from its own fresh child (`litert.memory_and_delegation`).
    calibration: image dir or TFRecord glob of real aligned faces for int8 and for re-estimating the
      BN statistics of the random-init networks; None -> synthetic noise images (the rows say so).
    parity_images: source of real faces for the Keras-vs-TFLite cosine column (None -> no column).
    bn_calibration_steps: forward passes of export.calibrate_batchnorm on the calibration images
      before export (0 = keep the init statistics, whose activations vanish: see mobiface_tf/export/batchnorm.py).
    extra_tflite: more .tflite files, timed together as rows named by their file stem.
    reference_dir: folder holding the publisher's REFERENCE_MODELS (../shared/data/models); the ones
      present become rows (model = file stem, quantize "none" / "uint8", reference = True), timed
      interleaved with each other. A folder without them adds nothing (logged).
    litert_benchmark: also run `litert-benchmark` on every file at every thread count (see _timed_group).
    Returns {"rows", "ratios", "meta", "cpu", "table"}; results.json holds meta, cpu, ratios and rows.
    Raises ValueError for unknown models / modes or bad counts, FileNotFoundError for missing extra files.
    """
    from mobiface_tf.export.convert import QUANTIZE_MODES  # TensorFlow is needed from here on anyway

    if runs < 1 or warmup < 0 or bn_calibration_steps < 0:
        raise ValueError(f"runs must be >= 1, warmup >= 0 and bn_calibration_steps >= 0, got runs={runs}, "
                         f"warmup={warmup}, bn_calibration_steps={bn_calibration_steps}")
    bad = [q for q in quantize_modes if q not in QUANTIZE_MODES]
    if bad:
        raise ValueError(f"unknown quantize mode(s) {bad}; expected some of {QUANTIZE_MODES}")
    missing = [str(p) for p in extra_tflite if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"--extra_tflite file(s) not found: {missing}; pass existing .tflite files")

    import keras

    from mobiface_tf.export.batchnorm import calibrate_batchnorm
    from mobiface_tf.export.faces import load_faces
    from mobiface_tf.export.pipeline import export
    from mobiface_tf.models import count_macs
    from mobiface_tf.models.zoo import build_config, resolve
    from mobiface_tf.peak import sgemm_gflops

    unknown = []
    for m in models:  # names checked by the one network resolver (models.zoo.resolve) before any work
        try:
            resolve(m)
        except ValueError as e:
            unknown.append(m)
            reason = str(e).split("; ", 1)[-1]
    if unknown:
        raise ValueError(f"unknown network(s) {unknown}; {reason}")
    output_dir = Path(output_dir)
    model_dir = output_dir / "models"
    model_dir.mkdir(parents=True, exist_ok=True)
    cpu = cpu_info()
    log(f"CPU: {cpu_label(cpu)}")
    peaks = {t: round(sgemm_gflops(threads=t), 2) for t in sorted({1, *threads})}
    log(f"sgemm peak GFLOP/s: {peaks}")

    if models and ("int8" in quantize_modes or bn_calibration_steps):
        if calibration:
            calib, calib_label = load_faces(calibration, num_calibration), f"real faces: {calibration}"
        else:
            calib = np.random.default_rng(0).uniform(0, 255, (num_calibration, 112, 112, 3)).astype(np.uint8)
            calib_label = "synthetic uniform noise (no --calibration given): int8 accuracy not representative"
    else:
        calib, calib_label = None, None
    faces = load_faces(parity_images, num_parity, seed=1) if parity_images else None

    def timed(group, paths, t):
        return _timed_group(group, paths, t, warmup, runs, litert_benchmark, log)

    rows, ratios = [], []
    for name in models:
        keras.utils.set_random_seed(0)
        model = build_config(name)  # random init: latency does not depend on the weights' values...
        if bn_calibration_steps:  # ...but int8 needs non-vanishing activations (export.calibrate_batchnorm)
            calibrate_batchnorm(model, calib, steps=bn_calibration_steps)
        params, macs = model.count_params(), count_macs(model)
        paths, reports = [], []
        for mode in quantize_modes:
            paths.append(model_dir / f"{name}_{mode}.tflite")
            reports.append(export(model, paths[-1], mode, calib, faces, enforce=False))
        for t in threads:
            group = []
            for mode, path, report in zip(quantize_modes, paths, reports):
                row = {"model": name, "quantize": mode, "threads": t, "params": params, "macs": macs,
                       "size_bytes": report["size_bytes"], "tflite": str(path),
                       "prelu_rewrite": report["prelu_rewrite"]["enabled"], "parity": report["parity"],
                       "bn_calibration_steps": bn_calibration_steps}
                if mode == "int8":
                    row["calibration"] = calib_label
                group.append(row)
            times = timed(group, paths, t)
            summary = add_ratios(group, times)
            if summary:
                ratios.append(summary)
            for row, path in zip(group, paths):
                if benchmark_model:
                    row["benchmark_model"] = run_benchmark_model(benchmark_model, path, t, runs, profile)
                rows.append(finish_row(row, peaks))
                log(f"{name} {row['quantize']} x{t}: p50 {row['latency_ms_p50']:.2f} ms"
                    + (f" (litert-benchmark {row['latency_ms_p50_litert']:.2f})" if litert_benchmark else "")
                    + f", partitions {row['partitions']}")
            if summary and "int8_vs_fp32" in summary:
                log(f"{name} x{t}: int8 / fp32 p50 = {summary['int8_vs_fp32']:.2f} (interleaved)")

    groups = []  # (files, row template per file, whether to report ratios to the fp32 file)
    if reference_dir is not None:
        refs = reference_files(reference_dir)
        if not refs:
            log(f"--reference: none of {[f'{n}.tflite' for n in REFERENCE_MODELS]} in {str(reference_dir)!r}; "
                "no reference rows")
        groups.append((refs, [{"model": r.stem, "quantize": REFERENCE_QUANTIZE[r.stem], "reference": True}
                              for r in refs], True))
    extras = [Path(e) for e in extra_tflite]
    groups.append((extras, [{"model": e.stem, "quantize": "as given"} for e in extras], False))
    for files, templates, with_ratios in groups:
        for t in threads if files else ():
            group = [{**tpl, "threads": t, "params": None, "macs": None, "size_bytes": f.stat().st_size,
                      "tflite": str(f)} for tpl, f in zip(templates, files)]
            times = timed(group, files, t)
            summary = add_ratios(group, times) if with_ratios else None
            if summary:
                ratios.append(summary)
            for row, f in zip(group, files):
                if benchmark_model:
                    row["benchmark_model"] = run_benchmark_model(benchmark_model, f, t, runs, profile)
                rows.append(finish_row(row, peaks))
                log(f"{row['model']} x{t}: p50 {row['latency_ms_p50']:.2f} ms, partitions {row['partitions']}")
    # The peak is the best of sgemm runs before and after the timing: one run alone may have met a busy machine.
    peaks_before = peaks
    peaks = {t: max(p, round(sgemm_gflops(threads=t), 2)) for t, p in peaks_before.items()}
    log(f"sgemm peak GFLOP/s after the timing: {peaks} (best of before and after)")
    rows = [finish_row(row, peaks) for row in rows]
    if profile:
        for row in rows:
            row["ops"] = op_counts(Path(row["tflite"]).read_bytes())
    meta = {"cpu": cpu_label(cpu), "peak_gflops_by_threads": peaks, "peak_gflops_before": peaks_before, "runs": runs, "warmup": warmup, "batch": 1,
            "calibration": calib_label, "bn_calibration_steps": bn_calibration_steps, "cpu_count": os.cpu_count(),
            "timing": ("LiteRT Interpreter + default XNNPACK delegate; per (model, threads) all quantize modes "
                       "loaded in one child process and invoked round-robin, shuffled order each round, "
                       f"{warmup} warm-up + {runs} timed rounds; p50/p90 per mode; ratios from the same run"),
            "memory": "peak RSS (VmHWM) of a fresh child per (model, mode, threads): Python + LiteRT + that model",
            "fraction_of_peak": PEAK_NOTE}
    if litert_benchmark:
        meta["litert_benchmark"] = (f"`litert-benchmark --model=F --num_threads=T --num_runs={max(runs, 2)} "
                                    f"--warmup_runs={warmup}` per file, alone in a fresh process (CompiledModel API, "
                                    "XNNPACK); latency_ms_p50_litert = its median, fully_accelerated = its verdict")
    table = write_outputs(rows, output_dir, meta, ratios, cpu)
    return {"rows": rows, "ratios": ratios, "meta": meta, "cpu": cpu, "table": table}


def ratio(rows, model, numerator="int8", denominator="none", threads=1) -> float | None:
    """p50(numerator mode) / p50(denominator mode) for one model at one thread count, same run."""
    def p50(mode):
        return next((r["latency_ms_p50"] for r in rows if r["model"] == model and r["quantize"] == mode
                     and r["threads"] == threads), None)
    a, b = p50(numerator), p50(denominator)
    return None if a is None or b is None else a / b
