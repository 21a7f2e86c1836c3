"""The online teacher of function-matching distillation: it embeds the very batch the student sees.

Beyer et al. (CVPR 2022, "Knowledge distillation: A good teacher is patient and consistent") show that a
student matches its teacher's function best when the teacher embeds exactly the augmented (and mixed) view the
student is trained on, rather than targets computed once for the clean crop ("precomputed" distillation,
`mobiface-prepare --teacher`, still available because it costs nothing during training).

Where the teacher runs depends on its format:
  - `.tflite` (LiteRT) and `.onnx` (onnxruntime) teachers run batched inside the tf.data input pipeline,
    after augmentation and mixing, through tf.numpy_function (`attach`). The pipeline prefetches, so the
    teacher of batch k+1 overlaps the student's step k.
  - `.keras` and SavedModel teachers are TensorFlow graphs: they run inside the training step
    (`embed_in_graph`), on the same images tensor the student takes, with no gradient.
Both load through mobiface_tf.embedder.load_embedder, so the pixel convention (`preprocess`), input checks and
the finite-output check are the ones every other CLI uses.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import tensorflow as tf

from mobiface_tf.embedder import PREPROCESS, load_embedder, stated_preprocess

PIPELINE_SUFFIXES = (".tflite", ".onnx")  # run in the input pipeline; the rest run inside the training step


class OnlineTeacher:
    """A teacher model that embeds training batches on the fly.

    Args:
      path: .tflite, .onnx, .keras or a SavedModel directory of 112x112 RGB faces.
      preprocess: its pixel convention (mobiface_tf.embedder.PREPROCESS); None: what the model states, else raw.
      num_threads: LiteRT / onnxruntime threads for pipeline teachers (None: the runtime's choice).
      batch_size: the embedder's chunk size (a fixed-batch .tflite is run in chunks of its own batch).
    Raises FileNotFoundError / ValueError (one line) as load_embedder does.
    """

    def __init__(self, path, preprocess: str | None = None, num_threads: int | None = 1, batch_size: int = 64):
        self.path = Path(path)
        self.preprocess = preprocess or stated_preprocess(self.path) or "raw"
        self.embedder = load_embedder(self.path, self.preprocess, batch_size, num_threads)
        self.embedding_dim = int(self.embedder.embedding_dim)
        self.in_pipeline = self.path.is_file() and self.path.suffix.lower() in PIPELINE_SUFFIXES
        self._lock = threading.Lock()  # LiteRT interpreters and this embedder are not re-entrant

    def describe(self) -> dict:
        """{file, embedding_dim, preprocess, runs_in}: what a run's settings record about the teacher."""
        return {"file": self.path.name, "embedding_dim": self.embedding_dim, "preprocess": self.preprocess,
                "runs_in": "input pipeline" if self.in_pipeline else "training step"}

    # ------------------------------------------------------------------------------------------ numpy
    def embed_numpy(self, images) -> np.ndarray:
        """float32 [B, D], unit L2 norm, of RGB images [B, 112, 112, 3] in 0..255 (no flip test)."""
        with self._lock:
            return self.embedder.embed(np.asarray(images, np.float32), flip=False)

    # ------------------------------------------------------------------------------------------ tf.data
    def embed_batch(self, images):
        """Teacher embeddings float32 [B, D] of a float32 image batch tensor [B, 112, 112, 3], through
        tf.numpy_function (for pipeline teachers; also works for the others, at numpy speed)."""
        out = tf.numpy_function(self.embed_numpy, [images], tf.float32, stateful=False, name="online_teacher")
        return tf.ensure_shape(out, [None, self.embedding_dim])

    def attach(self, images, labels, *rest):
        """A tf.data map: (images, labels, *rest) -> (images, labels, teacher embeddings [B, D], *rest)."""
        return (images, labels, self.embed_batch(images), *rest)

    # ------------------------------------------------------------------------------------------ graph
    def embed_in_graph(self, images):
        """Teacher embeddings float32 [B, D] (unit norm, no gradient) computed by TensorFlow ops, for .keras and
        SavedModel teachers called inside the training step. ValueError for pipeline teachers."""
        if self.in_pipeline:
            raise ValueError(f"teacher {self.path.name!r} runs in the input pipeline (attach), not in the step")
        x = PREPROCESS[self.preprocess](tf.cast(images, tf.float32))
        model = getattr(self.embedder, "model", None)
        if model is not None:  # .keras
            emb = model(x, training=False)
        else:  # SavedModel serving signature
            fn = self.embedder._fn
            (in_name, _), = fn.structured_input_signature[1].items()
            (out_name, _), = fn.structured_outputs.items()
            emb = fn(**{in_name: x})[out_name]
        emb = tf.reshape(emb, [-1, self.embedding_dim])  # [B, 1, 1, D] / [B, D, 1, 1] -> [B, D] (checked at load)
        emb = tf.math.l2_normalize(tf.cast(emb, tf.float32), axis=1, epsilon=1e-12)
        return tf.stop_gradient(emb)
