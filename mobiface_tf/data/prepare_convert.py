"""Per-input work of prepare_data, run in worker processes: read one input, align it, encode the crop.

`start_pool` gives a spawn pool of workers (each with one TF thread and SIGINT ignored); `init_worker` sets up
the current process instead when there is one worker. `convert` maps one task (mobiface_tf.data.prepare_inputs)
to its JPEG crop or the reason it was skipped.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal

from mobiface_tf.align import FaceAligner
from mobiface_tf.images import (CROP_SIZE, ImageError, TooLargeError, decode_image_rgb, image_header, printable,
                                read_image_bytes)
from mobiface_tf.data.sources import RecordIOError, RecordIOReader, check_label

_CFG: dict = {}
_READERS: dict = {}


def init_worker(cfg: dict) -> None:
    """Per-process setup: settings, and one TF thread so N workers use N cores. MTCNN is built on first use."""
    _CFG.update(cfg)
    from mobiface_tf import quiet

    if not quiet.is_verbose([]):  # a spawned worker imports TF afresh: set its C++ log level first
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # in-process (workers=1) after TF started: keep the caller's threads
        pass


def _init_pool_worker(cfg: dict) -> None:
    """A pool worker ignores Ctrl-C (SIGINT goes to the whole process group): the parent stops the pool and says
    what was kept, in one line, instead of one traceback per worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    init_worker(cfg)


def start_pool(workers: int, cfg: dict):
    """A spawn pool whose workers ignore SIGINT from their first instruction: the parent ignores it while they
    start (a spawned interpreter keeps an ignored SIGINT ignored), then restores its own handler."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return mp.get_context("spawn").Pool(workers, initializer=_init_pool_worker, initargs=(cfg,))
    finally:
        signal.signal(signal.SIGINT, previous)


def convert(task):
    """(index, kind, ref, label) -> (index, jpeg|None, label, source, reason|None, mode, num_faces).

    `source` is the input's path relative to --input (or `file.rec#key`), printable: a name that is not UTF-8
    is escaped (`Jos\\xe9_Maria/1.jpg`), so it can be stored in the shard and the manifest."""
    from mobiface_tf.data.tfrecord import encode_jpeg
    index, kind, ref, label = task
    if kind == "skip":  # left out when listing (hidden, not an image, outside an identity): counted, not read
        path, reason = ref
        return index, None, label, printable(os.path.relpath(path, _CFG["input"])), reason, None, 0
    if kind == "rec":
        reader = _READERS.get(ref[0])
        if reader is None:
            reader = _READERS[ref[0]] = RecordIOReader(ref[0])
        header, data = reader.read(ref[1])
        source = f"{os.path.basename(ref[0])}#{ref[1]}"
        try:
            label = check_label(header.label[0], _CFG["label_limit"],
                                f"in {ref[0]} at offset {reader.index[ref[1]]} (key {ref[1]})")
        except RecordIOError as e:  # skipped with its reason; the manifest lists it
            return index, None, None, source, str(e), None, 0
    else:
        source = printable(os.path.relpath(ref, _CFG["input"]))
        try:
            data = read_image_bytes(ref)
        except ImageError as e:
            return index, None, label, source, str(e), None, 0
    try:
        w, h, fmt, mode, orientation = image_header(data, source, _CFG["max_pixels"])  # upright size: EXIF orientation applied
        is_crop = (w, h) == (CROP_SIZE, CROP_SIZE)
        how = "mtcnn" if _CFG["align"] == "mtcnn" or (_CFG["align"] == "auto" and not is_crop) else "none"
        rgb = decode_image_rgb(data, source, _CFG["max_pixels"])  # also validates the bytes we may keep as-is
        if how == "none":
            if not is_crop:
                raise ImageError(f"not {CROP_SIZE}x{CROP_SIZE} ({w}x{h}) but --align=none takes aligned crops; "
                                 f"use --align=mtcnn: {source}")
            # Keep an RGB JPEG crop byte for byte (no re-encoding loss); anything else is re-encoded.
            # A rotated one (EXIF orientation) is re-encoded upright: TFRecord readers ignore EXIF.
            jpeg = data if (fmt == "JPEG" and mode == "RGB" and orientation == 1) else encode_jpeg(rgb)
            return index, jpeg, label, source, None, how, 1
        res = FaceAligner(min_face_size=_CFG["min_face_size"]).align(rgb)
        if res.crop is None:
            return index, None, label, source, f"{res.reason}: {source}", how, 0
        return index, encode_jpeg(res.crop), label, source, None, how, res.num_faces
    except TooLargeError as e:  # prepare has the flag that raises the limit: say so
        return index, None, label, source, str(TooLargeError(e.width, e.height, e.limit, e.name,
                                                             "resize it below that, or raise --max_pixels")), None, 0
    except ImageError as e:
        return index, None, label, source, str(e), None, 0
