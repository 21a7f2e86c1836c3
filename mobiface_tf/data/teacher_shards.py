"""Teacher embeddings stored in prepared shards, for knowledge distillation (`add_teacher`).

Used by prepare_data's --teacher (after the shards are written) and on its own on existing shards.
"""
from __future__ import annotations

import glob
import json
import os
import sys
from pathlib import Path

from mobiface_tf.atomic import leftover_temps, write_json_atomic
from mobiface_tf.images import CROP_SIZE
from mobiface_tf.data.manifest import MANIFEST, read_manifest, write_manifest
from mobiface_tf.fingerprint import model_fingerprint


def teacher_embeddings(embedder, images):
    """(crop, mirror) L2-normalised embeddings, each float32 [N, D], of uint8 RGB crops [N, 112, 112, 3]."""
    return embedder.embed(images, flip=False), embedder.embed(images[:, :, ::-1], flip=False)


def add_teacher(output, teacher, preprocess: str | None = None, num_threads: int | None = None,
                progress: bool = True, batch_size: int = 64) -> dict:
    """Store a teacher's embeddings in every example of the shards in `output`, for knowledge distillation.

    Per example, "teacher/embedding" and "teacher/embedding_flip" (float32 [D], unit L2 norm) are the
    teacher's embeddings of the stored crop (decoded as the training pipeline decodes it) and of its
    horizontal mirror. Each shard is rewritten to a temp file and renamed; a `<shard>.teacher.json` marker
    (teacher sha256 + shard size) lets a rerun skip finished shards, so a kill loses at most one shard's work.
    The manifest gains "teacher": {file, sha256, embedding_dim, preprocess, images_per_s} and the new
    shard sizes.

    Raises:
      ValueError: no manifest in `output`, or a teacher that is not a model of 112x112 faces.
    """
    from tqdm import tqdm

    out = Path(output)
    manifest_path = out / MANIFEST
    if not manifest_path.is_file():
        raise ValueError(f"no {MANIFEST} in '{out}': run mobiface-prepare --input=... --output={out} first")
    manifest = read_manifest(out)
    teacher = Path(teacher)
    emb, info = _load_teacher(teacher, preprocess, batch_size, num_threads)
    total = int(manifest["num_images"])
    bar = tqdm(total=total, unit="img", disable=not progress, file=sys.stderr, desc=f"teacher {teacher.name}")
    seconds, embedded = 0.0, 0
    # Shard temp files a killed run left (this version's hidden ones, and the "*.tmp-PID" of older versions).
    old_style = glob.glob(str(out / "*.tfrecord.tmp-*"))
    for tmp in [*old_style, *(p for p in leftover_temps(out) if ".tfrecord." in p.name)]:
        os.remove(tmp)
    for entry in manifest["shards"]:
        s, k = _embed_shard(out, entry, emb, info, bar)
        seconds += s
        embedded += k
    bar.close()
    if embedded:
        info["images_per_s"] = embedded / seconds
        info["num_threads"] = num_threads
    else:
        info["images_per_s"] = (manifest.get("teacher") or {}).get("images_per_s", float("nan"))
    manifest["teacher"] = info
    write_manifest(out, manifest)
    return manifest


def _load_teacher(teacher: Path, preprocess, batch_size: int, num_threads):
    """(embedder, the manifest's "teacher" record without its speed); ValueError for a missing teacher or one
    that is not a model of 112x112 faces."""
    from mobiface_tf.embedder import load_embedder, stated_preprocess

    if not teacher.exists():
        raise ValueError(f"teacher model not found: '{teacher}'. Pass --teacher=PATH (.tflite, .onnx, .keras or "
                         "a SavedModel directory)")
    preprocess = preprocess or stated_preprocess(teacher) or "raw"
    emb = load_embedder(teacher, preprocess, batch_size, num_threads)
    if tuple(emb.input_hwc[:2]) not in ((CROP_SIZE, CROP_SIZE), (None, None)):
        raise ValueError(f"teacher '{teacher}' takes {emb.input_hwc} inputs; a teacher must embed "
                         f"{CROP_SIZE}x{CROP_SIZE} aligned faces")
    sha = model_fingerprint(teacher)
    return emb, {"file": teacher.name, "sha256": sha, "embedding_dim": int(emb.embedding_dim),
                 "preprocess": preprocess}


def _embed_shard(out: Path, entry: dict, emb, info: dict, bar) -> tuple[float, int]:
    """Rewrite one shard (manifest entry `entry`, whose "bytes" is updated) with the teacher's embeddings, unless
    its marker says this teacher already did; returns (seconds spent embedding, images embedded)."""
    import time

    import numpy as np
    import tensorflow as tf

    from mobiface_tf.data.tfrecord import FEATURE_IMAGE, AtomicShardWriter, add_teacher_features

    shard = out / entry["file"]
    marker = out / (entry["file"] + ".teacher.json")
    if marker.is_file():
        done = json.loads(marker.read_text())
        if done.get("sha256") == info["sha256"] and done.get("preprocess") == info["preprocess"] and \
                done.get("bytes") == shard.stat().st_size:
            entry["bytes"] = done["bytes"]
            bar.update(entry["num_images"])
            return 0.0, 0
    seconds, embedded = 0.0, 0
    records = [r.numpy() for r in tf.data.TFRecordDataset(str(shard))]
    examples = [tf.train.Example.FromString(r) for r in records]
    writer = AtomicShardWriter(shard)
    try:
        for start in range(0, len(examples), 256):
            chunk = examples[start:start + 256]
            images = np.stack([tf.io.decode_jpeg(ex.features.feature[FEATURE_IMAGE].bytes_list.value[0],
                                                 channels=3).numpy() for ex in chunk])
            t0 = time.perf_counter()
            e, e_flip = teacher_embeddings(emb, images)
            seconds += time.perf_counter() - t0
            embedded += len(chunk)
            for ex, a, b in zip(chunk, e, e_flip):
                writer.write(add_teacher_features(ex, a, b).SerializeToString())
            bar.update(len(chunk))
    except BaseException:
        writer.abort()
        raise
    entry["bytes"] = writer.commit()
    write_json_atomic(marker, dict(info, bytes=entry["bytes"]))
    done_file = out / (entry["file"] + ".done.json")
    if done_file.is_file():  # keep prepare's own resume check in step with the new size
        done = json.loads(done_file.read_text())
        done["bytes"] = entry["bytes"]
        write_json_atomic(done_file, done)
    return seconds, embedded
