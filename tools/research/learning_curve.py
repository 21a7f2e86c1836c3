"""Held-out accuracy against training minutes, from a training run's val_history.jsonl (written when the
trainer runs with --val_every and --val_lfw_dir/--val_pairs [--val_folds]).

    python tools/research/learning_curve.py --model_dir=runs/distill/mobiface_gdc --output=docs/distill_curve.png \
        [--teacher_accuracy=0.9933 --teacher_label="teacher (reference MobileFaceNet)"]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from mobiface_tf import quiet

quiet.install(sys.argv)

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "training run directory holding val_history.jsonl", required=True)
flags.DEFINE_string("output", None, "PNG path (default: MODEL_DIR/learning_curve.png)")
flags.DEFINE_float("teacher_accuracy", None, "draw the teacher's accuracy on the same folds as a line")
flags.DEFINE_string("teacher_label", "teacher", "legend label of --teacher_accuracy")
flags.DEFINE_string("dataset", "lfw", "which val_history entries to plot (lfw or bin)")


def plot_curve(history: list, output, title: str, teacher=None, teacher_label="teacher") -> Path:
    """history: dicts with run_seconds, accuracy (0..1), step; draws accuracy (%) against minutes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    minutes = [h["run_seconds"] / 60 for h in history]
    acc = [100 * h["accuracy"] for h in history]
    ax.plot(minutes, acc, "o-", label="student (held-out folds)")
    for m, a, h in zip(minutes, acc, history):
        ax.annotate(f"{a:.1f}", (m, a), textcoords="offset points", xytext=(0, 6), fontsize=7, ha="center")
    if teacher is not None:
        ax.axhline(100 * teacher, color="gray", ls="--", label=teacher_label)
    ax.set_xlabel("training wall time (minutes)")
    ax.set_ylabel("held-out verification accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    from mobiface_tf.atomic import atomic_path

    output = Path(output)
    with atomic_path(output, keep_suffix=True) as tmp:  # matplotlib picks the format from the suffix
        fig.savefig(tmp)
    plt.close(fig)
    return output


def main(argv):
    """CLI: plot held-out accuracy against training minutes from MODEL_DIR/val_history.jsonl and print it.

    Returns None (exit 0); exits 1 with one "error: ..." line when there is no history to plot.
    Flags are defined at module level.
    """
    del argv
    path = Path(FLAGS.model_dir) / "val_history.jsonl"
    if not path.is_file():
        sys.exit(f"error: no {path}; train with --val_every=N and --val_lfw_dir/--val_pairs to record one")
    history = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    history = [h for h in history if h.get("dataset") == FLAGS.dataset]
    if not history:
        sys.exit(f"error: {path} has no {FLAGS.dataset!r} entries")
    folds = history[-1].get("folds")
    title = f"{Path(FLAGS.model_dir).name}: held-out {FLAGS.dataset.upper()}" + (f" folds {folds}" if folds else "")
    out = plot_curve(history, FLAGS.output or Path(FLAGS.model_dir) / "learning_curve.png", title,
                     FLAGS.teacher_accuracy, FLAGS.teacher_label)
    for h in history:
        print(f"step {h['step']:>6}  {h['run_seconds'] / 60:6.1f} min  accuracy {h['accuracy']:.4f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    quiet.define_verbose_flag()
    app.run(main)
