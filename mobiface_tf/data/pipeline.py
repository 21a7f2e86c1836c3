"""The tf.data input pipeline over aligned-face TFRecord shards.

files --(shard by file per input pipeline)--> shuffle files --> interleave records --> shuffle --> repeat
      --> parse + decode JPEG + random horizontal flip (training) --> batch (uint8) --> float32 0..255 --> prefetch

With augmentations (function-matching distillation) the flip becomes augment_image, and after the cast come
mixup / CutMix per batch and then the online teacher (a .tflite / .onnx model, tf.numpy_function) on the batch.

The model normalises inside (its first layer computes (x - 127.5) / 128), so the dataset yields raw 0..255
floats. Everything is a tf.data op (no py_function), so the iterator can be saved with
tf.train.Checkpoint(iterator=it) and restored to the same element.

Corrupt shards: the manifest written by mobiface-prepare records each shard's size and record count.
A shard whose size differs is reported by name before anything is read; a shard that stops early or holds a
corrupt record fails with an assertion naming the shard (or, with skip_corrupt=True, keeps the records read
so far and prints a warning naming it).
"""
from __future__ import annotations

import logging
import os
import sys

import tensorflow as tf

from mobiface_tf.data.augment import AugmentConfig, augment_image, mix_batch
from mobiface_tf.data.manifest import MANIFEST, read_manifest  # noqa: F401  (re-exported)
from mobiface_tf.data.tfrecord import parse_example

AUTOTUNE = tf.data.AUTOTUNE
log = logging.getLogger(__name__)
_COUNT_CHUNK = 256  # records per step of the per-shard record-count check


# ----------------------------------------------------------------------------------------------- files
def match_files(file_pattern) -> list[str]:
    """A glob, a directory of shards (DIR/*.tfrecord), or a list of paths -> sorted list of files."""
    if isinstance(file_pattern, (list, tuple)):
        files = [str(f) for f in file_pattern]
    else:
        pattern = str(file_pattern)
        if tf.io.gfile.isdir(pattern):
            pattern = os.path.join(pattern, "*.tfrecord")
        files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise ValueError(f"data pattern matched no files: {file_pattern!r}. Run mobiface-prepare first")
    return files


def _expected_counts(files: list[str], skip_corrupt: bool) -> list[int]:
    """Per-file record count from the manifest (-1 when unknown). Checks sizes: a cheap truncation test."""
    counts = []
    manifests = {}
    for f in files:
        d = os.path.dirname(f)
        if d not in manifests:
            try:
                manifests[d] = {s["file"]: s for s in read_manifest(d).get("shards", [])}
            except ValueError:
                manifests[d] = {}
        entry = manifests[d].get(os.path.basename(f))
        if entry is None:
            counts.append(-1)
            continue
        size = tf.io.gfile.stat(f).length
        if size != entry["bytes"]:
            msg = (f"corrupt TFRecord shard '{f}': {size} bytes, manifest says {entry['bytes']}. "
                   f"Re-run mobiface-prepare, or pass skip_corrupt=True to use the records that are readable")
            if not skip_corrupt:
                raise ValueError(msg)
            log.warning(msg)
        counts.append(int(entry["num_images"]))
    return counts


def _records(path, expected, skip_corrupt: bool, counts_known: bool):
    """The records of one shard; checks the count against the manifest so corruption names the shard."""
    ds = tf.data.TFRecordDataset(path, buffer_size=1 << 20)
    if not counts_known:
        # No manifest entry: TF's own DataLossError, which names the offset but not the file.
        return ds.ignore_errors(log_warning=True) if skip_corrupt else ds
    # A reader stops at the first truncated or corrupt record; count what it yielded and compare at the end.
    # Records are counted in chunks (a scan step per record cost ~30% of the pipeline's throughput).
    ds = ds.ignore_errors().batch(_COUNT_CHUNK).map(lambda r: (r, False))
    ds = ds.concatenate(tf.data.Dataset.from_tensors((tf.zeros([0], tf.string), True)))

    def check(count, elem):
        recs, last = elem
        bad = tf.logical_and(last, tf.not_equal(count, expected))
        if skip_corrupt:
            def warn():
                with tf.control_dependencies([tf.print(
                        "WARNING: skipping the unreadable rest of corrupt TFRecord shard", path, "- read", count,
                        "of", expected, "records", output_stream=sys.stderr)]):
                    return tf.constant(True)
            op = tf.cond(bad, warn, lambda: tf.constant(False))
        else:
            op = tf.debugging.Assert(tf.logical_not(bad), [
                "corrupt or truncated TFRecord shard", path, "read", count, "records, manifest says", expected,
                "- re-run mobiface-prepare or pass skip_corrupt=True"])
        with tf.control_dependencies([op]):
            return count + tf.size(recs, out_type=tf.int64), (tf.identity(recs), last)

    ds = ds.scan(tf.constant(0, tf.int64), check)
    return ds.filter(lambda recs, last: tf.logical_not(last)).map(lambda recs, last: recs).unbatch()


# ----------------------------------------------------------------------------------------------- ops
def to_float(images):
    """uint8 -> float32 in 0..255 (the model normalises). Applied once per batch: casting each image and
    batching float32 moves 4x the bytes and measured ~1.6x slower than batching uint8 and casting once."""
    return tf.cast(images, tf.float32)


def random_flip(image, seed):
    """Flips one [H,W,C] image left-right with probability 1/2, from a stateless int64 [2] seed.

    Done per image inside the parallel decode map: a batch-level tf.where over [B,112,112,3] was 2-4x slower.
    """
    return tf.image.stateless_random_flip_left_right(image, seed=seed)


def flip_decision(seed):
    """The coin random_flip tosses for this seed: True when it mirrors the image. (It draws one stateless
    uniform and flips below 0.5, so the distillation target can follow the same coin.)"""
    return tf.random.stateless_uniform([], seed=seed, dtype=tf.float32) < 0.5


def decode_train(serialized, seed):
    """Record -> (uint8 image, int32 label) with a random flip: the per-element training op."""
    image, label = parse_example(serialized)
    return random_flip(image, seed), tf.cast(label, tf.int32)


def make_decode_train_distill(teacher_dim: int):
    """Record -> (uint8 image, int32 label, float32 teacher [D]) with a random flip; the target is the
    teacher's embedding of the mirror image when the image was mirrored."""

    def decode(serialized, seed):
        image, label, t, t_flip = parse_example(serialized, teacher_dim)
        flip = flip_decision(seed)
        image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
        return image, tf.cast(label, tf.int32), tf.where(flip, t_flip, t)

    return decode


def make_decode_augment(cfg: AugmentConfig):
    """Record -> (uint8 image, int32 label) augmented per image by `cfg` (mobiface_tf.data.augment), rounded
    back to uint8 so batches stay small; the seed makes it reproducible."""

    def decode(serialized, seed):
        image, label = parse_example(serialized)
        image = augment_image(image, seed, cfg)
        return tf.saturate_cast(tf.round(image), tf.uint8), tf.cast(label, tf.int32)

    return decode


def make_mix(cfg: AugmentConfig, log_mix: bool = False):
    """Batch-level map ((images, labels), seed) -> (mixed images, labels), or with log_mix
    (mixed images, labels, lam [B], partner [B], unmixed images): mixup / CutMix of mix_batch."""

    def mix(batch, seed):
        images, labels = batch
        mixed, lam, partner = mix_batch(images, seed, cfg)
        return (mixed, labels, lam, partner, images) if log_mix else (mixed, labels)

    return mix


def decode_eval(serialized):
    """Record -> (uint8 image, int32 label), no augmentation."""
    image, label = parse_example(serialized)
    return image, tf.cast(label, tf.int32)


def batch_to_float(images, labels, *rest):
    """The per-batch op: uint8 [B,H,W,C] -> float32 0..255 (other components pass through)."""
    return (to_float(images), labels, *rest)


# ----------------------------------------------------------------------------------------------- dataset
def make_dataset(file_pattern, batch_size: int, training: bool, seed: int | None = None,
                 deterministic: bool = False, skip_corrupt: bool = False, shuffle_buffer: int = 10_000,
                 input_context: tf.distribute.InputContext | None = None, repeat: int | None = None,
                 cycle_length: int = 16, threads: int | None = None, teacher_dim: int = 0,
                 augment: AugmentConfig | None = None, teacher=None, log_mix: bool = False) -> tf.data.Dataset:
    """(images float32 [B,112,112,3] in 0..255, labels int32 [B]) from TFRecord shards; with teacher_dim > 0
    (training only) also the teacher's embeddings float32 [B, teacher_dim] (of the mirror where flipped).

    Function-matching distillation (training only): `augment` replaces the plain random flip by the per-image
    augmentations of mobiface_tf.data.augment and, when it mixes, mixup / CutMix per batch. `teacher`, an
    OnlineTeacher that runs in the pipeline (.tflite / .onnx), then embeds each final batch, after
    augmentation and mixing, so the element becomes (images, labels, teacher embeddings [B, D]). With log_mix
    the element also carries (lam [B], partner [B], the unmixed images) for inspection.

    Args:
      file_pattern: glob, directory of *.tfrecord, or list of files.
      batch_size: the batch this dataset yields; under tf.distribute pass the per-replica batch
        (input_context.get_per_replica_batch_size(global_batch)).
      training: shuffle, random flip, drop the last partial batch, repeat forever unless `repeat` is set.
      seed, deterministic: with deterministic=True and a seed, two runs yield the same elements in the same order.
      skip_corrupt: keep the readable part of a corrupt shard (warning naming it) instead of failing.
      input_context: from strategy.distribute_datasets_from_function; each input pipeline reads every
        num_input_pipelines-th file (sharding by file, so workers never read the same record).
      repeat: number of epochs; None = forever when training, once otherwise.
      cycle_length: shards read at once by the interleave.
      threads: tf.data private threadpool size (None: TF's default, all cores).
    """
    _check_dataset_args(batch_size, training, teacher_dim, augment, teacher)
    files = match_files(file_pattern)
    counts = _expected_counts(files, skip_corrupt)
    ds = tf.data.Dataset.from_tensor_slices((files, tf.constant(counts, tf.int64)))
    if input_context is not None and input_context.num_input_pipelines > 1:
        n, i = input_context.num_input_pipelines, input_context.input_pipeline_id
        if len(files) < n:
            raise ValueError(f"{len(files)} shards cannot feed {n} input pipelines; re-run mobiface-prepare "
                             f"with --shards >= {n}")
        ds = ds.shard(n, i)
    if training:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    known = all(c >= 0 for c in counts)
    ds = ds.interleave(lambda f, n: _records(f, n, skip_corrupt, known), cycle_length=min(cycle_length, len(files)),
                       block_length=1, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    epochs = repeat if repeat is not None else (None if training else 1)
    if epochs != 1:
        ds = ds.repeat(epochs)
    if training:
        # Stateless flips seeded from a random dataset zipped in: reproducible with a seed, and checkpointable.
        ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=seed).batch(2)))
        if augment is not None:
            decode = make_decode_augment(augment)
        else:
            decode = make_decode_train_distill(teacher_dim) if teacher_dim else decode_train
        ds = ds.map(decode, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    else:
        ds = ds.map(decode_eval, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    if skip_corrupt:
        ds = ds.ignore_errors(log_warning=True)  # a record whose JPEG does not decode
    ds = ds.batch(batch_size, drop_remainder=training, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    ds = ds.map(batch_to_float, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    if training and augment is not None and (augment.mixes or log_mix):
        # A second seed stream, one [2] seed per batch, for the batch-level mixing.
        mix_seeds = tf.data.Dataset.random(seed=None if seed is None else seed + 1).batch(2)
        ds = tf.data.Dataset.zip((ds, mix_seeds)).map(make_mix(augment, log_mix), num_parallel_calls=AUTOTUNE,
                                                      deterministic=deterministic)
    if teacher is not None:
        # After every augmentation: the teacher embeds exactly the pixels the student gets. One call at a time
        # (the interpreter is not re-entrant); the prefetch below overlaps it with the training step.
        ds = ds.map(teacher.attach)
    ds = ds.prefetch(AUTOTUNE)
    return ds.with_options(_options(deterministic, threads))


def _check_dataset_args(batch_size: int, training: bool, teacher_dim: int, augment, teacher) -> None:
    """ValueError for settings make_dataset cannot honour (checked before any file is read)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if (augment is not None or teacher is not None) and not training:
        raise ValueError("augment and an online teacher apply to training datasets only")
    if augment is not None and teacher_dim:
        raise ValueError("augmentations change the pixels, but precomputed teacher embeddings only cover the crop "
                         "and its mirror: use an online teacher (--teacher=MODEL) with augmentations")
    if teacher is not None and not teacher.in_pipeline:
        raise ValueError(f"teacher {teacher.path.name!r} runs inside the training step, not in the input pipeline")


def _options(deterministic: bool, threads: int | None) -> tf.data.Options:
    """tf.data options: determinism, and with `threads` a private threadpool of that size (1 intra-op thread)."""
    opts = tf.data.Options()
    opts.deterministic = deterministic
    if threads:
        opts.threading.private_threadpool_size = threads
        opts.threading.max_intra_op_parallelism = 1
    return opts
