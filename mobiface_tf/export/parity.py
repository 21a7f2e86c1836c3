"""Keras-vs-TFLite parity: cosine similarity of the embeddings of the same real faces, and the per-mode minimum."""
from __future__ import annotations

import numpy as np

from mobiface_tf.litert import make_interpreter, run_batched

# Parity on real faces (cosine similarity Keras vs TFLite embeddings): enforced minimum per mode.
# int8 is only reported (the aim is a mean >= 0.98).
PARITY_MIN = {"none": 0.9999, "float16": 0.999}
INT8_PARITY_AIM = 0.98


class ParityError(RuntimeError):
    """An export whose TFLite embeddings disagree with Keras beyond the mode's threshold."""


def cosine(a, b) -> np.ndarray:
    """Row-wise cosine similarity, in float64: random-init embeddings can be ~1e-7 in norm."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-300)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-300)
    return np.sum(a * b, -1)


def parity(model, model_content: bytes, images) -> dict:
    """Cosine similarity between Keras and TFLite embeddings of the same real faces: min and mean."""
    keras_emb = np.asarray(model.predict(np.asarray(images, np.float32), batch_size=32, verbose=0))
    keras_emb = keras_emb.reshape(len(keras_emb), -1)  # as run_batched flattens the TFLite output
    tfl_emb = run_batched(make_interpreter(model_content), np.asarray(images, np.float32))
    cos = cosine(keras_emb, tfl_emb)
    return {"cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()), "num_images": int(len(cos))}
