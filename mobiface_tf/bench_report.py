"""Rows, tables and chart of the TFLite benchmark (mobiface_tf.bench measures, this module presents).

`finish_row` adds achieved GFLOP/s and the fraction of the sgemm peak to a timed row, `add_ratios` the p50
ratios to fp32 within one interleaved run; `write_outputs` writes results.json, results.md (CPU line and
Markdown tables) and latency.png. `static_table` is the no-timing table (params, MACs) of --static.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mobiface_tf.atomic import atomic_path, write_json_atomic, write_text_atomic
from mobiface_tf.litert import cpu_info, cpu_label

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
    with atomic_path(path, keep_suffix=True) as tmp:  # matplotlib picks the format from the suffix
        fig.savefig(tmp, dpi=120)
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
    write_json_atomic(output_dir / "results.json", {"cpu": cpu, "meta": meta, "ratios": list(ratios), "rows": rows},
                      indent=2)
    notes = "\n".join(f"- {k}: {v}" for k, v in meta.items())
    write_text_atomic(output_dir / "results.md", table + "\n\n" + notes + "\n")
    latency_chart(rows, output_dir / "latency.png")
    return table


def ratio(rows, model, numerator="int8", denominator="none", threads=1) -> float | None:
    """p50(numerator mode) / p50(denominator mode) for one model at one thread count, same run."""
    def p50(mode):
        return next((r["latency_ms_p50"] for r in rows if r["model"] == model and r["quantize"] == mode
                     and r["threads"] == threads), None)
    a, b = p50(numerator), p50(denominator)
    return None if a is None or b is None else a / b
