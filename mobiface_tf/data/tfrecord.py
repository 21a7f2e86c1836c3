"""TFRecord shards of aligned faces: the example format and atomic shard writing (the manifest is data.manifest's).

Every example holds "image/encoded" (JPEG of a 112x112 RGB crop) and "image/class/label" (int64), plus
"image/source" (the input path or RecordIO key) so a shard can be traced back and checked for duplicates.
"""
from __future__ import annotations

import os

import cv2
import numpy as np
import tensorflow as tf

from mobiface_tf.atomic import commit_temp, temp_beside
from mobiface_tf.images import CROP_SIZE, printable

FEATURE_IMAGE = "image/encoded"
FEATURE_LABEL = "image/class/label"
FEATURE_SOURCE = "image/source"
FEATURE_TEACHER = "teacher/embedding"            # float32 [D]: the teacher's L2-normalised embedding of the crop
FEATURE_TEACHER_FLIP = "teacher/embedding_flip"  # float32 [D]: ... of the crop's horizontal mirror
JPEG_QUALITY = 95  # high enough that re-encoding the crops costs no accuracy, ~5 KB per 112x112 face


def shard_name(index: int, num_shards: int, prefix: str = "train") -> str:
    """'train-00003-of-00008.tfrecord' for shard index 3 of 8 (prepare_data's naming)."""
    return f"{prefix}-{index:05d}-of-{num_shards:05d}.tfrecord"


def encode_jpeg(rgb: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG bytes of an RGB uint8 image [H, W, 3] at `quality` (1-100). Raises ValueError when OpenCV cannot encode it."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"JPEG encoding failed for an array of shape {rgb.shape}")
    return buf.tobytes()


def make_example(jpeg: bytes, label: int, source: str = "") -> bytes:
    """A serialized tf.train.Example with the JPEG crop, its int64 label and its source path (the shard format).

    The source is stored as UTF-8 text in its printable form (a file name that is not UTF-8 is escaped)."""
    feat = {
        FEATURE_IMAGE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])),
        FEATURE_LABEL: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
        FEATURE_SOURCE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[printable(source).encode()])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feat)).SerializeToString()


def add_teacher_features(example, embedding, embedding_flip):
    """A copy of a tf.train.Example with the teacher features set (replacing any already there)."""
    ex = tf.train.Example()
    ex.CopyFrom(example)
    f = ex.features.feature
    for key, value in ((FEATURE_TEACHER, embedding), (FEATURE_TEACHER_FLIP, embedding_flip)):
        f[key].Clear()
        f[key].float_list.value.extend(np.asarray(value, np.float32).ravel().tolist())
    return ex


_FEATURES = {
    FEATURE_IMAGE: tf.io.FixedLenFeature([], tf.string),
    FEATURE_LABEL: tf.io.FixedLenFeature([], tf.int64),
}


def parse_example(serialized, teacher_dim: int = 0):
    """serialized tf.train.Example -> (image uint8 [112,112,3], label int64), plus with teacher_dim > 0 the
    teacher embeddings (float32 [teacher_dim] of the crop, float32 [teacher_dim] of its mirror).
    Works eagerly and in tf.data."""
    spec = dict(_FEATURES)
    if teacher_dim:
        spec[FEATURE_TEACHER] = tf.io.FixedLenFeature([teacher_dim], tf.float32)
        spec[FEATURE_TEACHER_FLIP] = tf.io.FixedLenFeature([teacher_dim], tf.float32)
    ex = tf.io.parse_single_example(serialized, spec)
    image = tf.io.decode_jpeg(ex[FEATURE_IMAGE], channels=3)
    image = tf.ensure_shape(image, [CROP_SIZE, CROP_SIZE, 3])
    if teacher_dim:
        return image, ex[FEATURE_LABEL], ex[FEATURE_TEACHER], ex[FEATURE_TEACHER_FLIP]
    return image, ex[FEATURE_LABEL]


def read_examples(path) -> list[dict]:
    """All examples of one shard as dicts {label, source, jpeg} (for tests and inspection, not training)."""
    out = []
    for rec in tf.data.TFRecordDataset(str(path)):
        ex = tf.train.Example.FromString(rec.numpy())
        f = ex.features.feature
        out.append({"label": f[FEATURE_LABEL].int64_list.value[0],
                    "source": f[FEATURE_SOURCE].bytes_list.value[0].decode() if FEATURE_SOURCE in f else "",
                    "jpeg": f[FEATURE_IMAGE].bytes_list.value[0],
                    "teacher": np.array(f[FEATURE_TEACHER].float_list.value, np.float32) if FEATURE_TEACHER in f
                    else None,
                    "teacher_flip": np.array(f[FEATURE_TEACHER_FLIP].float_list.value, np.float32)
                    if FEATURE_TEACHER_FLIP in f else None})
    return out


class AtomicShardWriter:
    """Writes a TFRecord to a temporary file beside `path` (mobiface_tf.atomic's hidden `.<name>.<hex>.tmp`, which
    no `*.tfrecord` glob matches) and renames it onto `path` on commit(), so a killed run never leaves a half shard
    under the final name. A killed run's temporary files are found by mobiface_tf.atomic.leftover_temps."""

    def __init__(self, path):
        self.path = str(path)
        self.tmp = str(temp_beside(self.path))
        self._writer = tf.io.TFRecordWriter(self.tmp)
        self.count = 0

    def write(self, serialized: bytes) -> None:
        """Append one serialized example to the temp file."""
        self._writer.write(serialized)
        self.count += 1

    def commit(self) -> int:
        """Close the temp file and rename it onto the shard's name (fsynced); returns the shard's size in bytes.
        On an error (a full disk) the error is raised and the final name is untouched (abort() drops the temp)."""
        self._writer.close()
        commit_temp(self.tmp, self.path)
        return os.path.getsize(self.path)

    def abort(self) -> None:
        """Close and delete the temp file; the shard's final name is never touched."""
        try:
            self._writer.close()
        finally:
            if os.path.exists(self.tmp):
                os.remove(self.tmp)
