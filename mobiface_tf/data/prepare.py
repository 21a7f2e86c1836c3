"""Aligned-face TFRecord shards from an image-folder tree, a flat folder of unlabelled faces, or RecordIO.

The library behind `tools/prepare_data.py` (a thin CLI). See `prepare` for the options:

  - alignment (MTCNN to the ArcFace 112x112 template, or crops kept as they are);
  - the held-out LFW protocol: `exclude_pairs` + `exclude_folds` leave out every image of every person who
    appears in those LFW View 2 folds (the folds are identity-disjoint), so a model trained on the rest is
    scored only on people it has never seen;
  - teacher embeddings for knowledge distillation (`teacher`, or `add_teacher` on existing shards).

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

from mobiface_tf.align import FaceAligner
from mobiface_tf.images import (CROP_SIZE, DEFAULT_MAX_PIXELS, ImageError, decode_image_rgb, image_header,
                                list_images, read_image_bytes)
from mobiface_tf.data.manifest import read_manifest, write_manifest
from mobiface_tf.data.sources import (RecordIOError, RecordIOReader, check_label, label_limit, list_image_folder,
                                      recordio_class_names)

IMAGES_PER_SHARD = 10_000


# ----------------------------------------------------------------------------------------------- per input (workers)
_CFG: dict = {}
_READERS: dict = {}


def _init_worker(cfg: dict) -> None:
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


def _convert(task):
    """(index, kind, ref, label) -> (index, jpeg|None, label, source, reason|None, mode, num_faces)."""
    from mobiface_tf.data.tfrecord import encode_jpeg
    index, kind, ref, label = task
    if kind == "skip":  # left out when listing (hidden, not an image, outside an identity): counted, not read
        path, reason = ref
        return index, None, label, os.path.relpath(path, _CFG["input"]), reason, None, 0
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
        source = os.path.relpath(ref, _CFG["input"])
        try:
            data = read_image_bytes(ref)
        except ImageError as e:
            return index, None, label, source, str(e), None, 0
    try:
        w, h, fmt, mode, orientation = image_header(data, source)  # upright size: EXIF orientation applied
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
    except ImageError as e:
        return index, None, label, source, str(e), None, 0


# ----------------------------------------------------------------------------------------------- driver
def _list_inputs(input_path: str, unlabelled: bool = False):
    """-> (tasks [(index, kind, ref, label)], class_names or None for RecordIO, source kind, RecordIO label
    limit or None)."""
    if input_path.lower().endswith(".rec"):  # any case: .rec, .REC
        with RecordIOReader(input_path) as reader:
            keys = reader.image_keys()
            limit = label_limit(len(keys), reader.identity_count())
        return [(i, "rec", (input_path, k), None) for i, k in enumerate(keys)], None, "recordio", limit
    # Entries the listing leaves out become "skip" tasks, so the manifest counts and lists them with a reason.
    if unlabelled:
        paths, skipped = list_unlabelled_images(input_path)
        tasks = [("file", p, 0) for p in paths] + [("skip", sk, None) for sk in skipped]
        return [(i, *t) for i, t in enumerate(tasks)], ["unlabelled"], "unlabelled_folder", None
    items, class_names, skipped = list_image_folder(input_path)
    tasks = [("file", p, label) for p, label in items] + [("skip", sk, None) for sk in skipped]
    return [(i, *t) for i, t in enumerate(tasks)], class_names, "image_folder", None


def list_unlabelled_images(root) -> tuple[list[str], list[tuple[str, str]]]:
    """Every image file under `root` (any depth), sorted: faces without identities; plus [(path, reason)] for
    what is left out (hidden or OS-litter entries, non-image files; rules in mobiface_tf.images).

    Raises ValueError when `root` is not a directory or holds no image.
    """
    from mobiface_tf.images import IMAGE_EXTENSIONS, MARKER_FILES

    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"--input is not a directory: '{root}'. Pass a folder of face images")
    paths, skipped = list_images(root)
    skipped = [(str(sk.path), sk.reason) for sk in skipped if sk.path.name not in MARKER_FILES]
    if not paths:
        raise ValueError(f"no image files under '{root}' (extensions {', '.join(IMAGE_EXTENSIONS)})")
    return [str(p) for p in paths], skipped


def _drop_classes(tasks, class_names, drop):
    """Tasks and class names without the class indices in `drop`, re-indexed and re-labelled (skips keep None)."""
    keep_names = [name for c, name in enumerate(class_names) if c not in drop]
    relabel = {old: new for new, old in enumerate(c for c in range(len(class_names)) if c not in drop)}
    kept = [t for t in tasks if t[3] not in drop]
    tasks = [(i, kind, ref, relabel.get(label)) for i, (_, kind, ref, label) in enumerate(kept)]  # skip: None
    return tasks, keep_names


def _exclude_identities(tasks, class_names, pairs_file, folds):
    """Drop every image of every person named in `folds` (1-based) of an LFW View 2 pairs.txt.

    Returns (tasks re-indexed and re-labelled, kept class names, record for the manifest).
    """
    from mobiface_tf.data.verification import lfw_fold_identities

    people = lfw_fold_identities(pairs_file, folds)
    drop = {c for c, name in enumerate(class_names) if name in people}
    tasks, keep_names = _drop_classes(tasks, class_names, drop)
    record = {"pairs": str(os.path.abspath(pairs_file)), "folds": sorted(folds),
              "people_in_folds": len(people), "num_identities": len(drop), "num_images": None}
    return tasks, keep_names, record


def _exclude_named(tasks, class_names, names_file):
    """Drop every image of every person listed in a names file (mobiface_tf.data.people: spaces or underscores,
    any case, NFC). Returns (tasks, kept class names, the manifest's "excluded_names" record)."""
    from mobiface_tf.data import people

    names = people.read_names_file(names_file)
    split = people.exclude(class_names, names)
    drop = set(range(len(class_names))) - set(split.keep)
    before = len(tasks)
    tasks, keep_names = _drop_classes(tasks, class_names, drop)
    record = {"names_file": str(os.path.abspath(names_file)), "people_in_file": len(names),
              "num_identities": len(split.excluded), "num_images": before - len(tasks),
              "identities": sorted(split.excluded),
              "reason": "listed in the names file (people an evaluation set scores the model on); names compared "
                        "by mobiface_tf.data.people.canonical_name (spaces = underscores, any case, Unicode NFC)"}
    return tasks, keep_names, record


def _input_stat(task) -> list:
    """[size, mtime_ns] of the file behind a task (the .rec for RecordIO); [-1, -1] when it is gone."""
    _, kind, ref, _ = task
    path = ref if kind == "file" else ref[0]  # skip: (path, reason); rec: (rec path, key)
    try:
        st = os.stat(path)
        return [st.st_size, st.st_mtime_ns]
    except OSError:
        return [-1, -1]


_LOCK = ".prepare.lock"


def prepare(input_path: str, output: str, *args, **kwargs) -> dict:
    """`_prepare` (arguments, return value and errors documented there) while holding `output`/.prepare.lock.

    A second run writing the same --output at once stops with ValueError naming the lock file; a lock left by
    a killed run (its pid is gone) is taken over. ValueError too when `output` is an existing file.
    """
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output '{out}' is an existing file; pass a directory for the shards (created when "
                         "missing)")
    out.mkdir(parents=True, exist_ok=True)
    lock = out / _LOCK
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            alive = pid > 0
            if alive:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    alive = False
                except PermissionError:
                    pass
            if alive:
                raise ValueError(f"--output '{out}' is being written by another prepare_data run (pid {pid}; lock "
                                 f"file {lock}); wait for it to finish, or delete the lock file if no run is "
                                 "active") from None
            lock.unlink(missing_ok=True)  # left by a killed run
    else:
        raise ValueError(f"cannot take the lock file {lock}; delete it if no prepare_data run is active")
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return _prepare(input_path, output, *args, **kwargs)
    finally:
        lock.unlink(missing_ok=True)


def _prepare(input_path: str, output: str, align: str = "auto", shards: int | None = None,
            workers: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, min_face_size: int = 20,
            progress: bool = True, exclude_pairs=None, exclude_folds=None, unlabelled: bool = False,
            teacher=None, teacher_preprocess: str | None = None, teacher_threads: int | None = None,
            exclude_names=None) -> dict:
    """Runs (or resumes) the conversion; returns the manifest (also written to `output`/manifest.json).

    Args:
      input_path: `<identity>/<image>` tree, a folder of faces (unlabelled=True), or a `.rec` beside its `.idx`.
      output: shard directory. align: auto | mtcnn | none. shards, workers: default one shard per 10,000
        inputs and one worker per CPU.
      exclude_pairs, exclude_folds: LFW View 2 pairs.txt and 1-based fold numbers; every image of every person
        in those folds is left out (an image folder only), and the manifest's "excluded" says how many.
      exclude_names: a names file (one person per line, e.g. CFP's Data/list_name.txt with spaces); those people
        are left out (an image folder only), matched by mobiface_tf.data.people.canonical_name; the manifest's
        "excluded_names" lists them and why.
      unlabelled: every image gets label 0 (class "unlabelled"); for distillation alone.
      teacher: a model path; its L2-normalised embeddings of each stored crop and of its mirror are added
        (see add_teacher). teacher_preprocess: its pixel convention (default: what the model states, else raw).

    Raises:
      ValueError: bad settings or input (the message says what to do); RecordIOError for a malformed .rec.
    """
    from tqdm import tqdm

    import tensorflow as tf

    from mobiface_tf.data.tfrecord import (MANIFEST, AtomicShardWriter, make_example, shard_name,
                                           write_json_atomic)
    if align not in ("auto", "mtcnn", "none"):
        raise ValueError(f"--align must be auto, mtcnn or none, got {align!r}")
    input_path = os.path.abspath(input_path)
    if bool(exclude_pairs) != bool(exclude_folds):
        raise ValueError("exclude_pairs and exclude_folds go together (e.g. pairs.txt and folds 1,2,3)")
    tasks, class_names, source_kind, limit = _list_inputs(input_path, unlabelled)
    excluded = None
    if exclude_pairs:
        if source_kind != "image_folder":
            raise ValueError("--exclude_pairs needs an <identity>/<image> folder tree as --input (LFW names the "
                             f"people by folder); got a {source_kind}")
        before = len(tasks)
        tasks, class_names, excluded = _exclude_identities(tasks, class_names, exclude_pairs, exclude_folds)
        excluded["num_images"] = before - len(tasks)
        if not tasks:
            raise ValueError(f"every input image belongs to a person in folds {exclude_folds} of {exclude_pairs}")
    excluded_names = None
    if exclude_names:
        if source_kind != "image_folder":
            raise ValueError("--exclude_names needs an <identity>/<image> folder tree as --input (people are named "
                             f"by folder); got a {source_kind}")
        tasks, class_names, excluded_names = _exclude_named(tasks, class_names, exclude_names)
        if not tasks:
            raise ValueError(f"every input image belongs to a person listed in {exclude_names}")
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

    cfg = {"input": input_path, "align": align, "max_pixels": max_pixels, "min_face_size": min_face_size,
           "label_limit": limit}
    # Settings and the input list (adding or removing an input moves others to other shards) are one
    # fingerprint for all shards; each shard's also covers the size and mtime of every input it holds, so a
    # file fixed, replaced or rewritten since rebuilds exactly the shards it lands in.
    fingerprint = hashlib.sha1(json.dumps(
        [cfg, num_shards, [t[2] for t in tasks], [t[3] for t in tasks]], sort_keys=True, default=str).encode()
    ).hexdigest()
    stats = [_input_stat(t) for t in tasks]

    def shard_inputs(s):
        return {str(tasks[i][2] if tasks[i][1] == "file" else tasks[i][2][0]): stats[i]
                for i in range(s, n, num_shards)}

    def shard_fingerprint(s):
        return hashlib.sha1(json.dumps([fingerprint, shard_inputs(s)], sort_keys=True).encode()).hexdigest()

    rebuilt = []

    def done_info(s):
        shard, done = out / names[s], out / (names[s] + ".done.json")
        if not (shard.exists() and done.exists()):
            return None
        info = json.loads(done.read_text())
        if info.get("fingerprint") != shard_fingerprint(s) or info.get("bytes") != shard.stat().st_size:
            old = info.get("inputs") or {}
            new = shard_inputs(s)
            if info.get("fingerprint_all") == fingerprint and old:
                changed = sorted(os.path.relpath(p, input_path) for p in new if old.get(p) != new[p])
                why = f"{len(changed)} input(s) changed since it was written (e.g. {changed[0]})" if changed else \
                    "its file changed"
            else:
                why = "the settings or the list of inputs changed (inputs added or removed)"
            rebuilt.append({"shard": names[s], "reason": why})
            print(f"prepare: rebuilding {names[s]}: {why}", file=sys.stderr)
            return None
        return info

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
            info = {"fingerprint": shard_fingerprint(s), "fingerprint_all": fingerprint,
                    "inputs": shard_inputs(s), "num_inputs": 0, "num_images": 0, "skipped": [],
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
                info["bytes"] = writer.commit()
                write_json_atomic(out / (names[s] + ".done.json"), info)
            except (OSError, tf.errors.OpError) as e:  # a full disk: this shard is dropped, finished ones kept
                try:
                    writer.abort()
                except (OSError, tf.errors.OpError):
                    pass  # the temp file may not even close on a full disk; the rerun deletes it
                detail = " ".join(str(getattr(e, "strerror", None) or getattr(e, "message", None) or e).split())
                raise OSError(getattr(e, "errno", None), f"cannot write shard {str(out / names[s])!r} "
                              f"({detail[:200]}); free space and rerun the same command: finished shards are kept") \
                    from None
            except BaseException:
                writer.abort()
                raise
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
    if any(c < 0 or c >= num_classes for c in counts):  # every label written has a class: sum(counts) == images
        raise RuntimeError(f"internal accounting error: labels {sorted(counts)} outside 0..{num_classes - 1}")
    manifest = {
        "synthetic": os.path.exists(os.path.join(input_path, "SYNTHETIC.txt")),
        "source": source_kind, "input": input_path, "align": align, "max_pixels": max_pixels,
        "min_face_size": min_face_size, "num_inputs": n, "num_images": num_images, "num_classes": num_classes,
        "class_names": class_names, "class_counts": [counts.get(c, 0) for c in range(num_classes)],
        "aligned_by": {k: sum(i["aligned_by"][k] for i in infos.values()) for k in ("mtcnn", "none")},
        "multi_face": sum(i["multi_face"] for i in infos.values()),
        "excluded": excluded,
        "excluded_names": excluded_names,
        "skipped": skipped,
        "shards": [{"file": names[s], "num_images": infos[s]["num_images"], "bytes": infos[s]["bytes"]}
                   for s in range(num_shards)],
        "rebuilt": rebuilt,
    }
    if sum(manifest["class_counts"]) != num_images:
        raise RuntimeError(f"internal accounting error: class counts sum to {sum(manifest['class_counts'])}, "
                           f"not {num_images} images")
    write_manifest(out, manifest)
    if teacher:
        manifest = add_teacher(out, teacher, preprocess=teacher_preprocess, num_threads=teacher_threads,
                               progress=progress)
    return manifest




# ----------------------------------------------------------------------------------------------- teacher
def model_sha256(path) -> str:
    """sha256 of a model file; of every file (path-sorted, names included) for a SavedModel directory."""
    h = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


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
    import time

    import numpy as np
    import tensorflow as tf
    from tqdm import tqdm

    from mobiface_tf.data.tfrecord import (FEATURE_IMAGE, MANIFEST, AtomicShardWriter, add_teacher_features,
                                           write_json_atomic)
    from mobiface_tf.embedder import load_embedder, stated_preprocess

    out = Path(output)
    manifest_path = out / MANIFEST
    if not manifest_path.is_file():
        raise ValueError(f"no {MANIFEST} in '{out}': run tools/prepare_data.py --input=... --output={out} first")
    manifest = read_manifest(out)
    teacher = Path(teacher)
    if not teacher.exists():
        raise ValueError(f"teacher model not found: '{teacher}'. Pass --teacher=PATH (.tflite, .onnx, .keras or "
                         "a SavedModel directory)")
    preprocess = preprocess or stated_preprocess(teacher) or "raw"
    emb = load_embedder(teacher, preprocess, batch_size, num_threads)
    if tuple(emb.input_hwc[:2]) not in ((CROP_SIZE, CROP_SIZE), (None, None)):
        raise ValueError(f"teacher '{teacher}' takes {emb.input_hwc} inputs; a teacher must embed "
                         f"{CROP_SIZE}x{CROP_SIZE} aligned faces")
    sha = model_sha256(teacher)
    info = {"file": teacher.name, "sha256": sha, "embedding_dim": int(emb.embedding_dim), "preprocess": preprocess}
    total = int(manifest["num_images"])
    bar = tqdm(total=total, unit="img", disable=not progress, file=sys.stderr, desc=f"teacher {teacher.name}")
    seconds, embedded = 0.0, 0
    for tmp in glob.glob(str(out / "*.tfrecord.tmp-*")):
        os.remove(tmp)
    for entry in manifest["shards"]:
        shard = out / entry["file"]
        marker = out / (entry["file"] + ".teacher.json")
        if marker.is_file():
            done = json.loads(marker.read_text())
            if done.get("sha256") == sha and done.get("preprocess") == preprocess and \
                    done.get("bytes") == shard.stat().st_size:
                entry["bytes"] = done["bytes"]
                bar.update(entry["num_images"])
                continue
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
    bar.close()
    if embedded:
        info["images_per_s"] = embedded / seconds
        info["num_threads"] = num_threads
    else:
        info["images_per_s"] = (manifest.get("teacher") or {}).get("images_per_s", float("nan"))
    manifest["teacher"] = info
    write_manifest(out, manifest)
    return manifest
