"""Prepare aligned 112x112 face TFRecord shards from an image-folder tree or an InsightFace RecordIO file.

  python tools/prepare_data.py --input=PATH --output=DIR [--align=auto|mtcnn|none] [--shards=N] [--workers=N]

PATH is `<identity>/<image>` folders, or a `.rec` next to its `.idx`. Writes DIR/train-00000-of-000NN.tfrecord
and DIR/manifest.json. Bad images are skipped with a reason in manifest["skipped"]; num_images + len(skipped)
equals the number of inputs.

Restartable: input i belongs to shard i % N. Each shard is written to a temp name and renamed when complete,
then a small `<shard>.done.json` records its counts. A rerun (e.g. after SIGKILL) skips shards whose done-file
matches this run's settings and rewrites the rest, so nothing is duplicated. The manifest is written last.
"""
from __future__ import annotations

import glob
import hashlib
import json
import math
import multiprocessing as mp
import os
import sys
from pathlib import Path

from absl import app, flags

from mobiface_tf.align import CROP_SIZE, DEFAULT_MAX_PIXELS, FaceAligner, ImageError, decode_image_rgb, image_size
from mobiface_tf.data.sources import RecordIOError, RecordIOReader, list_image_folder, recordio_class_names

FLAGS = flags.FLAGS
flags.DEFINE_string("input", None, "Image-folder tree <identity>/<image>, or a .rec file next to its .idx.")
flags.DEFINE_string("output", None, "Directory for the TFRecord shards and manifest.json.")
flags.DEFINE_enum("align", "auto", ["auto", "mtcnn", "none"],
                  "mtcnn: detect + warp to the ArcFace template; none: inputs are aligned 112x112 crops; "
                  "auto: none for 112x112 inputs, mtcnn otherwise.")
flags.DEFINE_integer("shards", None, "Number of shards (default: one per 10,000 inputs).", lower_bound=1)
flags.DEFINE_integer("workers", None, "Worker processes (default: CPU count).", lower_bound=1)
flags.DEFINE_integer("max_pixels", DEFAULT_MAX_PIXELS, "Refuse images above this many pixels, before decoding.",
                     lower_bound=1)
flags.DEFINE_integer("min_face_size", 20, "MTCNN minimum face size in pixels.", lower_bound=12)
flags.DEFINE_boolean("progress", True, "Show a progress bar.")

IMAGES_PER_SHARD = 10_000


# ----------------------------------------------------------------------------------------------- per input (workers)
_CFG: dict = {}
_READERS: dict = {}


def _init_worker(cfg: dict) -> None:
    """Per-process setup: settings, and one TF thread so N workers use N cores. MTCNN is built on first use."""
    _CFG.update(cfg)
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def _convert(task):
    """(index, kind, ref, label) -> (index, jpeg|None, label, source, reason|None, mode, num_faces)."""
    from mobiface_tf.data.tfrecord import encode_jpeg
    index, kind, ref, label = task
    if kind == "rec":
        reader = _READERS.get(ref[0])
        if reader is None:
            reader = _READERS[ref[0]] = RecordIOReader(ref[0])
        header, data = reader.read(ref[1])
        label, source = int(header.label[0]), f"{os.path.basename(ref[0])}#{ref[1]}"
    else:
        source = os.path.relpath(ref, _CFG["input"])
        try:
            with open(ref, "rb") as f:
                data = f.read()
        except OSError as e:
            return index, None, label, source, f"cannot read file ({e.strerror}): {source}", None, 0
    try:
        w, h, fmt, mode = image_size(data, source)
        is_crop = (w, h) == (CROP_SIZE, CROP_SIZE)
        how = "mtcnn" if _CFG["align"] == "mtcnn" or (_CFG["align"] == "auto" and not is_crop) else "none"
        rgb = decode_image_rgb(data, source, _CFG["max_pixels"])  # also validates the bytes we may keep as-is
        if how == "none":
            if not is_crop:
                raise ImageError(f"not {CROP_SIZE}x{CROP_SIZE} ({w}x{h}) but --align=none takes aligned crops; "
                                 f"use --align=mtcnn: {source}")
            # Keep an RGB JPEG crop byte for byte (no re-encoding loss); anything else is re-encoded.
            jpeg = data if (fmt == "JPEG" and mode == "RGB") else encode_jpeg(rgb)
            return index, jpeg, label, source, None, how, 1
        res = FaceAligner(min_face_size=_CFG["min_face_size"]).align(rgb)
        if res.crop is None:
            return index, None, label, source, f"{res.reason}: {source}", how, 0
        return index, encode_jpeg(res.crop), label, source, None, how, res.num_faces
    except ImageError as e:
        return index, None, label, source, str(e), None, 0


# ----------------------------------------------------------------------------------------------- driver
def _list_inputs(input_path: str):
    """-> (tasks [(index, kind, ref, label)], class_names or None for RecordIO, source kind)."""
    if input_path.endswith(".rec"):
        with RecordIOReader(input_path) as reader:
            keys = reader.image_keys()
        return [(i, "rec", (input_path, k), None) for i, k in enumerate(keys)], None, "recordio"
    items, class_names = list_image_folder(input_path)
    return [(i, "file", p, label) for i, (p, label) in enumerate(items)], class_names, "image_folder"


def prepare(input_path: str, output: str, align: str = "auto", shards: int | None = None,
            workers: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, min_face_size: int = 20,
            progress: bool = True) -> dict:
    """Runs (or resumes) the conversion; returns the manifest."""
    from tqdm import tqdm

    from mobiface_tf.data.tfrecord import (MANIFEST, AtomicShardWriter, make_example, shard_name,
                                           write_json_atomic)
    if align not in ("auto", "mtcnn", "none"):
        raise ValueError(f"--align must be auto, mtcnn or none, got {align!r}")
    input_path = os.path.abspath(input_path)
    tasks, class_names, source_kind = _list_inputs(input_path)
    n = len(tasks)
    num_shards = shards or max(1, math.ceil(n / IMAGES_PER_SHARD))
    num_shards = min(num_shards, n)
    workers = workers or os.cpu_count() or 1
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    names = [shard_name(s, num_shards) for s in range(num_shards)]
    stale = sorted(set(os.path.basename(p) for p in glob.glob(str(out / "train-*-of-*.tfrecord"))) - set(names))
    if stale:
        raise ValueError(f"--output '{out}' holds shards of another run ({stale[0]} ...); use an empty --output")
    for tmp in glob.glob(str(out / "*.tmp-*")):  # leftovers of a killed run: never complete, safe to drop
        os.remove(tmp)
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        manifest_path.unlink()  # rewritten last, so its presence always means "complete"

    cfg = {"input": input_path, "align": align, "max_pixels": max_pixels, "min_face_size": min_face_size}
    fingerprint = hashlib.sha1(json.dumps(
        [cfg, num_shards, [t[2] for t in tasks]], sort_keys=True, default=str).encode()).hexdigest()

    def done_info(s):
        shard, done = out / names[s], out / (names[s] + ".done.json")
        if not (shard.exists() and done.exists()):
            return None
        info = json.loads(done.read_text())
        ok = info.get("fingerprint") == fingerprint and info.get("bytes") == shard.stat().st_size
        return info if ok else None

    infos = {s: done_info(s) for s in range(num_shards)}
    todo = [s for s in range(num_shards) if infos[s] is None]
    work = [tasks[i] for s in todo for i in range(s, n, num_shards)]
    bar = tqdm(total=n, initial=n - len(work), unit="img", disable=not progress, file=sys.stderr,
               desc=f"prepare ({align}, {workers} workers)")
    pool = None
    if workers > 1 and work:
        pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(cfg,))
        results = pool.imap(_convert, work, chunksize=4)
    else:
        _init_worker(cfg)
        results = map(_convert, work)
    try:
        for s in todo:
            writer = AtomicShardWriter(out / names[s])
            info = {"fingerprint": fingerprint, "num_inputs": 0, "num_images": 0, "skipped": [],
                    "class_counts": {}, "aligned_by": {"mtcnn": 0, "none": 0}, "multi_face": 0}
            try:
                for _ in range(s, n, num_shards):
                    index, jpeg, label, source, reason, how, faces = next(results)
                    info["num_inputs"] += 1
                    if jpeg is None:
                        info["skipped"].append({"path": source, "reason": reason})
                    else:
                        writer.write(make_example(jpeg, label, source))
                        info["num_images"] += 1
                        info["class_counts"][str(label)] = info["class_counts"].get(str(label), 0) + 1
                        info["aligned_by"][how] += 1
                        info["multi_face"] += int(faces > 1)
                    bar.update(1)
            except BaseException:
                writer.abort()
                raise
            info["bytes"] = writer.commit()
            write_json_atomic(out / (names[s] + ".done.json"), info)
            infos[s] = info
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()

    # ------------------------------------------------------------------------------------ manifest, last
    counts = {}
    for info in infos.values():
        for k, v in info["class_counts"].items():
            counts[int(k)] = counts.get(int(k), 0) + v
    if class_names is None:
        class_names = recordio_class_names(input_path, sorted(counts))
    num_classes = len(class_names)
    num_images = sum(i["num_images"] for i in infos.values())
    skipped = [sk for s in range(num_shards) for sk in infos[s]["skipped"]]
    if num_images + len(skipped) != n:
        raise RuntimeError(f"internal accounting error: {num_images} images + {len(skipped)} skipped != {n} inputs")
    manifest = {
        "synthetic": os.path.exists(os.path.join(input_path, "SYNTHETIC.txt")),
        "source": source_kind, "input": input_path, "align": align, "max_pixels": max_pixels,
        "min_face_size": min_face_size, "num_inputs": n, "num_images": num_images, "num_classes": num_classes,
        "class_names": class_names, "class_counts": [counts.get(c, 0) for c in range(num_classes)],
        "aligned_by": {k: sum(i["aligned_by"][k] for i in infos.values()) for k in ("mtcnn", "none")},
        "multi_face": sum(i["multi_face"] for i in infos.values()),
        "skipped": skipped,
        "shards": [{"file": names[s], "num_images": infos[s]["num_images"], "bytes": infos[s]["bytes"]}
                   for s in range(num_shards)],
    }
    write_json_atomic(manifest_path, manifest)
    return manifest


def main(argv):
    del argv
    if not FLAGS.input or not FLAGS.output:
        raise app.UsageError("--input and --output are required, e.g. --input=photos/ --output=data/train")
    try:
        m = prepare(FLAGS.input, FLAGS.output, FLAGS.align, FLAGS.shards, FLAGS.workers, FLAGS.max_pixels,
                    FLAGS.min_face_size, FLAGS.progress)
    except (ValueError, RecordIOError, FileNotFoundError) as e:
        sys.exit(f"prepare_data: error: {e}")
    print(f"wrote {m['num_images']} images of {m['num_classes']} classes in {len(m['shards'])} shards to "
          f"{FLAGS.output}; skipped {len(m['skipped'])} of {m['num_inputs']} inputs "
          f"(aligned by mtcnn: {m['aligned_by']['mtcnn']}, kept as crops: {m['aligned_by']['none']})")


if __name__ == "__main__":
    app.run(main)
