"""The file a run produces: the backbone alone as a float32 `.keras` embedding model (raw RGB 0-255 input,
plain BN), checked on a probe batch first and written atomically.
"""
from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from mobiface_tf.atomic import atomic_path
from mobiface_tf.sidecar import drop_stale_sidecar
from mobiface_tf.training.errors import TrainingDiverged
from mobiface_tf.training.model import build_backbone


def save_embedding_model(backbone, backbone_name: str, embedding_dim: int, head: str | None, path) -> Path:
    """Save the backbone alone (raw RGB 0-255 [N, H, W, 3] -> [N, embedding_dim]) as float32 with plain BN,
    whatever the training precision; returns `path`.

    Raises TrainingDiverged (nothing written) when the model gives NaN/Inf or zero embeddings on a probe batch,
    and OSError (what to do) when the file cannot be written. Written through mobiface_tf.atomic (a unique temporary
    name in the same folder, renamed into place), so neither a full disk nor a concurrent writer leaves a half model."""
    policy = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("float32")
    try:
        clean = build_backbone(backbone_name, embedding_dim, head, sync_bn=False)
    finally:
        keras.mixed_precision.set_dtype_policy(policy)
    clean.set_weights(backbone.get_weights())
    path = Path(path)
    check_embeddings_on_probe(clean, path)
    try:
        with atomic_path(path, keep_suffix=True) as tmp:  # Keras wants the ".keras" suffix
            clean.save(tmp)
    except OSError as e:
        raise OSError(e.errno, f"cannot write the embedding model {str(path)!r} ({e.strerror or e}); free space "
                      "and rerun the same command: it resumes from the last checkpoint") from None
    drop_stale_sidecar(path)  # the eval sidecar of the model this replaces (mobiface_tf.sidecar)
    return path


def check_embeddings_on_probe(model, path, num: int = 4) -> None:
    """Run `model` on a fixed probe batch (num images of uniform noise, 0..255, at its input size) and raise
    TrainingDiverged, naming `path`, unless every embedding is finite and non-zero."""
    shape = tuple(d or 112 for d in model.input_shape[1:])
    probe = np.random.default_rng(0).uniform(0, 255, (num, *shape)).astype(np.float32)
    emb = np.asarray(model(probe, training=False), np.float64)
    norms = np.linalg.norm(emb, axis=-1)
    if not np.isfinite(emb).all() or not (norms > 1e-12).all():
        raise TrainingDiverged(f"not writing {str(path)!r}: the trained model gives "
                               f"{'NaN/Inf' if not np.isfinite(emb).all() else 'zero'} embeddings on a probe batch. "
                               "Resume from an earlier checkpoint (--resume_from) with a lower --lr")

