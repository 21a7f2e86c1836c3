"""The outputs of the comparison (mobiface_tf.compare): the results table as Markdown and the accuracy-against-
latency plot, both from the rows of results.json.
"""
from __future__ import annotations

from pathlib import Path

from mobiface_tf.atomic import atomic_path


def markdown(rows: list, meta: dict) -> str:
    """The results table as Markdown (one line per row of `rows`) followed by the budget, protocol and CPU notes from `meta`."""
    head = ("| network | form | params | MACs | size | p50 1 thread (ms) | held-out acc | Δ vs Keras | train |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
    lines = []
    for r in rows:
        drop = r.get("accuracy_drop_vs_keras")
        delta = "" if drop is None else f"{-100 * drop:+.2f} pt"
        lines.append("| {model} | {form} | {params} | {macs} | {size} | {lat} | {acc} | {delta} | {train} |".format(
            model=r["model"], form=r["form"],
            params=f"{r['params'] / 1e6:.2f} M" if r.get("params") else "n/a",
            macs=f"{r['macs'] / 1e6:.0f} M" if r.get("macs") else "n/a",
            size=f"{r['size_bytes'] / 1e6:.2f} MB" if r.get("size_bytes") else "n/a",
            lat=f"{r['latency_ms_p50']:.2f}" if r.get("latency_ms_p50") else "n/a",
            acc=f"{r['heldout_accuracy']:.4f}" if r.get("heldout_accuracy") is not None else "n/a",
            delta=delta, train=f"{r['train_seconds'] / 60:.1f} min" if r.get("train_seconds") else "n/a"))
    b = meta["budget"]
    notes = [f"Held-out LFW accuracy: folds {meta['folds']} of {meta['pairs']} ({meta['num_pairs']} pairs, "
             "cross-validated over those folds, flip test); the students never saw those people.",
             f"Budget: {b['steps']} steps of batch {b['batch_size']} per network ({b['steps'] * b['batch_size']:,} "
             f"images), distillation only (cosine), teacher {meta['teacher']}.",
             "int8: full-integer, activation ranges clipped to the least quantisation error on the calibration "
             "faces (the export's default); int8_minmax: the same with the converter's own min/max ranges.",
             f"Latency: 1 thread, one interleaved LiteRT run over every file; CPU: {meta['cpu_label']}."]
    if meta.get("synthetic"):
        notes.insert(0, "SYNTHETIC DATA: a smoke run; these figures say nothing about real faces.")
    return head + "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def plot(rows: list, path: Path, title: str) -> Path:
    """PNG of held-out accuracy (%) against 1-thread TFLite p50 latency (ms), one colour per network, one marker per form; returns `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=100)
    marks = {"none": "o", "float16": "s", "int8": "^", "int8_minmax": "v"}
    for model in dict.fromkeys(r["model"] for r in rows):
        pts = [r for r in rows if r["model"] == model and r.get("latency_ms_p50") and r.get("heldout_accuracy")]
        if not pts:
            continue
        line, = ax.plot([r["latency_ms_p50"] for r in pts], [100 * r["heldout_accuracy"] for r in pts], "-", lw=0.8,
                        alpha=0.5)
        for r in pts:
            ax.plot(r["latency_ms_p50"], 100 * r["heldout_accuracy"], marks.get(r["form"], "o"),
                    color=line.get_color(), label=f"{model} {r['form']}")
    ax.set_xlabel("TFLite latency p50, 1 thread (ms)")
    ax.set_ylabel("held-out LFW accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    with atomic_path(path, keep_suffix=True) as tmp:  # matplotlib picks the format from the suffix
        fig.savefig(tmp)
    plt.close(fig)
    return path
