"""Held-out verification while training (--val_lfw_dir/--val_pairs and/or --val_bin every --val_every steps),
through mobiface_tf.evaluate on the in-memory backbone; and the check that opens those files before step 1.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from mobiface_tf.training.config import VAL_HISTORY
from mobiface_tf.training.progress import scalar_summary

log = logging.getLogger(__name__)


def in_memory_embedder(model, batch_size: int = 64):
    """The embedder interface (mobiface_tf.embedder) over the in-memory backbone (raw RGB 0-255 [N, H, W, 3] ->
    [N, D]), for held-out verification."""
    from mobiface_tf.embedder import Embedder

    class InMemoryEmbedder(Embedder):
        def _forward(self, batch):
            return np.asarray(model(batch, training=False), np.float32)

    return InMemoryEmbedder(Path("<training model>"), "raw", batch_size, tuple(model.input_shape[1:]),
                            model.output_shape[-1])


def evaluate_verification(backbone, lfw_dir=None, pairs=None, bin_path=None, folds=None, flip=False) -> dict:
    """Verification reports {"lfw": ..., "bin": ...} (mobiface_tf.evaluate's report dicts: accuracy, its std,
    folds, ...) on LFW-style pairs (restricted to 1-based `folds` when given) and/or an InsightFace .bin."""
    from mobiface_tf import evaluate as ev

    emb = in_memory_embedder(backbone)
    out = {}
    if lfw_dir and pairs:
        out["lfw"] = ev.evaluate_lfw(emb, pairs, lfw_dir, flip=flip, folds=folds, progress=False)[0]
    if bin_path:
        out["bin"] = ev.evaluate_bin(emb, bin_path, flip=flip, progress=False)[0]
    return out


def check_val_inputs(cfg) -> None:
    """Open every held-out file the run will read (--val_bin, --val_pairs with --val_lfw_dir) before step 1.

    Raises ValueError, one line naming the flag the user typed, for a missing or unreadable file, or a .bin
    holding a crop that is not 112x112 (validation does not re-align). A .bin without both same and different
    pairs is accepted with a warning (validation then logs a rate alone).
    """
    import pickle

    from mobiface_tf.data.verification import check_image_sizes, read_bin, read_lfw_pairs
    from mobiface_tf.images import CROP_SIZE

    if cfg.val_bin:
        try:
            images, issame = read_bin(cfg.val_bin)
            # Validation embeds the crops as they are (no re-alignment): one of another size would stop the run
            # at its first validation.
            check_image_sizes(cfg.val_bin, images, (CROP_SIZE, CROP_SIZE), "the network's input", realign=False)
        except (ValueError, OSError, pickle.UnpicklingError) as e:
            msg = " ".join(str(e).split()).replace("--bin=", "--val_bin=")
            raise ValueError(f"--val_bin={cfg.val_bin!r}: {msg}") from None
        if issame.all() or not issame.any():
            log.warning("--val_bin=%s holds only %s pairs: validation reports a rate, not an accuracy",
                        cfg.val_bin, "same" if issame.all() else "different")
    if cfg.val_pairs:
        try:
            pairs = read_lfw_pairs(cfg.val_pairs, cfg.val_lfw_dir)
        except (ValueError, OSError) as e:
            raise ValueError(f"--val_pairs={cfg.val_pairs!r} / --val_lfw_dir={cfg.val_lfw_dir!r}: "
                             f"{' '.join(str(e).split())}") from None
        # Validation embeds the crops as they are (train has no --realign): check their sizes now, from the
        # headers alone, rather than at the first validation an hour in.
        from mobiface_tf.images import ImageError, image_header, read_image_bytes

        folds = set(int(f) - 1 for f in cfg.val_folds) if cfg.val_folds else None
        for path in sorted({p for pr in pairs if folds is None or pr.fold in folds for p in (pr.path_a, pr.path_b)}):
            try:
                w, h = image_header(read_image_bytes(path), str(path))[:2]
            except (ImageError, OSError) as e:
                raise ValueError(f"--val_lfw_dir={cfg.val_lfw_dir!r}: {' '.join(str(e).split())}") from None
            if (w, h) != (CROP_SIZE, CROP_SIZE):
                raise ValueError(f"--val_lfw_dir={cfg.val_lfw_dir!r}: {str(path)!r} is {w}x{h}, expected "
                                 f"{CROP_SIZE}x{CROP_SIZE} aligned crops (validation does not re-align); save the "
                                 "crops at that size (mobiface-prepare aligns photos)")


def validate_now(cfg, step: int, backbone, writer, model_dir: Path | None, run_seconds: float) -> dict:
    """Score the held-out sets at `step` when --val_every asks for it: logs each, writes TensorBoard scalars and
    (chief: model_dir not None) one val_history.jsonl line each; returns {"val_<set>_accuracy": float}."""
    due = cfg.val_every and (step % cfg.val_every == 0 or step == cfg.steps) and (cfg.val_bin or cfg.val_lfw_dir)
    if not due:
        return {}
    out = {}
    reports = evaluate_verification(backbone, cfg.val_lfw_dir, cfg.val_pairs, cfg.val_bin, cfg.val_folds, cfg.val_flip)
    for key, rep in reports.items():
        if rep.get("accuracy") is None:  # a set of one kind of pair: a rate, no accuracy
            rate = "true_accept_rate" if "true_accept_rate" in rep else "true_reject_rate"
            log.info("step %d  %s verification %s %.4f (%s)", step, key, rate, rep[rate], rep["one_sided"])
            continue
        log.info("step %d  %s verification accuracy %.4f +- %.4f%s", step, key, rep["accuracy"],
                 rep["accuracy_std"], f" (folds {cfg.val_folds})" if key == "lfw" and cfg.val_folds else "")
        with writer.as_default(step=step):
            scalar_summary(f"val_{key}_accuracy", rep["accuracy"], step)
        out[f"val_{key}_accuracy"] = rep["accuracy"]
        if model_dir is not None:
            with open(model_dir / VAL_HISTORY, "a") as fh:
                fh.write(json.dumps(dict(step=step, dataset=key, accuracy=rep["accuracy"],
                                         accuracy_std=rep["accuracy_std"], folds=rep.get("folds"), flip=cfg.val_flip,
                                         time=time.time(), run_seconds=run_seconds)) + "\n")
    return out
