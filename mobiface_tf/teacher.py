"""A distillation teacher that runs inside the training step (an imported or trained .keras embedding model).

The existing distillation path (tools/prepare_data.py --add_teacher) runs the teacher once, offline, and
stores its embeddings of each crop and of its mirror in the shards. That path takes any model
`embedder.load_embedder` reads, an imported .keras included. This module is the other way: the teacher is
a frozen Keras model called in the same tf.function as the student, so it sees exactly the batch the
student sees (whatever augmentation the pipeline applies) and no shard rewrite is needed.

    teacher = load_teacher("mobilefacenet_imported.keras")        # frozen, inference mode
    with tf.GradientTape() as tape:
        emb = student(images, training=True)                       # images: float32 RGB 0..255 [B, 112, 112, 3]
        target = teacher_targets(teacher, images)                  # [B, D] unit rows, no gradient
        kd = 1 - cos(emb, target)                                  # e.g. train.distillation_loss(emb, target)

The project's models (and importer output) take raw RGB 0..255, as the training pipeline yields it, so the
batch goes to both networks unchanged. Only .keras teachers run in the graph: a .tflite / .onnx teacher is
converted first with `python -m mobiface_tf.import_model` (MobileFaceNet), or used through --add_teacher.
"""
from __future__ import annotations

from pathlib import Path

CROP = (112, 112, 3)


def load_teacher(path, input_shape=CROP):
    """Load a .keras embedding model as a frozen teacher (trainable=False: no trainable weights, BN in
    inference mode even when called with training=True).

    Raises ValueError (one line) for a missing file, a non-.keras file (.tflite / .onnx: import them first),
    or a model that does not map [N, *input_shape] images to [N, D] embeddings.
    """
    import zipfile

    import keras

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"teacher {str(path)!r} does not exist")
    if path.suffix.lower() in (".tflite", ".onnx"):
        raise ValueError(f"teacher {str(path)!r} is a {path.suffix} file, which cannot run inside the training "
                         "step: import it first (python -m mobiface_tf.import_model --source=... --output=T.keras) "
                         "or store its embeddings in the shards (tools/prepare_data.py --add_teacher)")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"teacher {str(path)!r} is not a .keras (zip) model file")
    model = keras.models.load_model(path, compile=False)
    in_shape, out_shape = model.input_shape, model.output_shape
    if isinstance(in_shape, list) or isinstance(out_shape, list) or tuple(in_shape[1:]) != tuple(input_shape) \
            or len(out_shape) != 2:
        raise ValueError(f"teacher {str(path)!r} maps {in_shape} to {out_shape}; expected one "
                         f"[N, {', '.join(map(str, input_shape))}] image input and one [N, D] embedding")
    model.trainable = False
    return model


def teacher_targets(teacher, images):
    """The teacher's unit-norm embeddings [B, D] of float32 RGB 0..255 `images` [B, H, W, 3], without gradient.

    Graph-safe: call it inside the tf.function training step. The teacher runs in inference mode."""
    import tensorflow as tf

    emb = teacher(images, training=False)
    return tf.stop_gradient(tf.math.l2_normalize(tf.cast(emb, tf.float32), axis=1, epsilon=1e-12))
