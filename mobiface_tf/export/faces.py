"""Real aligned faces for int8 calibration and Keras-vs-TFLite parity: a seeded sample of an image folder
or of TFRecord shards (the mobiface-prepare format), decoded by mobiface_tf.images."""
from __future__ import annotations

from pathlib import Path

import numpy as np

def load_faces(source, limit: int, seed: int = 0, size: int = 112) -> np.ndarray:
    """Up to `limit` aligned faces as uint8 RGB [N, size, size, 3] from an image dir or TFRecords.

    `source` is a directory of images (walked recursively, e.g. ../shared/data/lfw/lfw-112x112), a
    directory of *.tfrecord shards, or a TFRecord glob (the mobiface-prepare format). Either way
    the faces are a seeded random sample (image dir: of the sorted file list; TFRecords: of the first
    records of the shards read interleaved, see TFRECORD_SAMPLE_BUFFER_*), so the set spans many
    identities, is the same on every run for one seed (whatever TF's global seed), and two seeds give
    (nearly) different faces, e.g. calibration vs parity faces. Images are listed and decoded by mobiface_tf.images (hidden
    files skipped, EXIF orientation applied). Raises ValueError when nothing usable is found.
    """
    from mobiface_tf.images import IMAGE_EXTENSIONS, list_images

    if limit < 1:
        raise ValueError(f"number of faces must be >= 1, got {limit}")
    path = Path(str(source))
    if path.is_dir() and not any(path.glob("*.tfrecord")):
        files, _ = list_images(path)
        if not files:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {str(source)!r}; "
                             "pass a directory of aligned 112x112 face crops or a TFRecord glob")
        order = np.random.default_rng(seed).permutation(len(files))[:limit]
        return np.stack([_read_image(files[i], size) for i in sorted(order)])
    return _read_tfrecord_faces(source, limit, size, seed)


MIN_CALIBRATION = 100  # int8 calibration faces; fewer give activation ranges that clip unseen faces


def load_calibration_faces(source, num: int = MIN_CALIBRATION, allow_fewer: bool = False) -> np.ndarray:
    """`num` aligned faces uint8 [num, 112, 112, 3] for int8 calibration (load_faces: hidden files skipped).

    Raises ValueError naming `source` when it holds fewer than `num` faces, unless allow_fewer (then all of
    them, at least one).
    """
    faces = load_faces(source, num)
    if len(faces) < num and not allow_fewer:
        raise ValueError(f"--calibration={str(source)!r} holds only {len(faces)} faces; int8 calibration needs "
                         f"{num} (--num_calibration) to measure activation ranges. Add faces, or pass "
                         "--allow_few_calibration to accept a smaller set")
    return faces


def _read_image(path, size):
    import cv2

    from mobiface_tf.images import load_image_rgb  # the one decoder: EXIF orientation, grey/alpha/16-bit/CMYK

    rgb = load_image_rgb(path)
    if rgb.shape[:2] != (size, size):
        rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
    return rgb


# Records are stored grouped by identity (prepare_data writes classes in order), so the first N of a shard
# are a few people. Sampling reads the shards interleaved and draws from the first (this many per face asked
# for, capped) records, so the sample spans the data without reading all of a large set.
TFRECORD_SAMPLE_BUFFER_PER_FACE, TFRECORD_SAMPLE_BUFFER_MAX = 20, 100_000


def _read_tfrecord_faces(pattern, limit, size, seed=0):
    # Imported lazily: the data package pulls in the aligner, which export from a directory never needs.
    import tensorflow as tf

    from mobiface_tf.data.pipeline import match_files
    from mobiface_tf.data.tfrecord import parse_example

    path = Path(str(pattern))
    files = match_files(str(path / "*.tfrecord") if path.is_dir() else str(pattern))
    # numpy does the drawing: a tf.data shuffle would also depend on TF's global seed, which training sets.
    rng = np.random.default_rng(seed)
    files = [files[i] for i in rng.permutation(len(files))]
    stream = tf.data.Dataset.from_tensor_slices(files).interleave(
        tf.data.TFRecordDataset, cycle_length=len(files), block_length=1)  # sequential: a fixed order
    buffer = min(TFRECORD_SAMPLE_BUFFER_MAX, TFRECORD_SAMPLE_BUFFER_PER_FACE * limit)
    pool = [r.numpy() for r in stream.take(buffer)]
    records = [pool[i] for i in sorted(rng.permutation(len(pool))[:limit])]
    images = []
    for serialized in records:
        image, _ = parse_example(serialized)
        image = image.numpy()
        if image.shape[:2] != (size, size):
            image = tf.image.resize(image, (size, size)).numpy().round().astype(np.uint8)
        images.append(image)
    if not images:
        raise ValueError(f"TFRecords {str(pattern)!r} hold no examples; run mobiface-prepare first")
    return np.stack(images)
