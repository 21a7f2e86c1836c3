"""Aligned-face TFRecord shards from an image-folder tree, a flat folder of unlabelled faces, or RecordIO.

The library behind `mobiface-prepare` (a thin CLI). See `prepare` for the options:

  - alignment (MTCNN to the ArcFace 112x112 template, or crops kept as they are);
  - the held-out LFW protocol: `exclude_pairs` + `exclude_folds` leave out every image of every person who
    appears in those LFW View 2 folds (the folds are identity-disjoint), so a model trained on the rest is
    scored only on people it has never seen;
  - teacher embeddings for knowledge distillation (`teacher`, or mobiface_tf.data.teacher_shards.add_teacher on
    existing shards).

Restartable: input i belongs to shard i % N. Each shard is written to a temp name and renamed when complete,
then a small `<shard>.done.json` records its counts. A rerun (e.g. after SIGKILL) skips shards whose done-file
matches this run's settings and rewrites the rest, so nothing is duplicated. The manifest is written last.

The steps live in mobiface_tf.data.prepare_inputs (listing, exclusions), mobiface_tf.data.prepare_convert (the
per-input work in worker processes) and here (resume check, shard writing, manifest); the --output lock is
mobiface_tf.locks.OutputLock.
"""
from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from mobiface_tf.atomic import leftover_temps, write_json_atomic
from mobiface_tf.images import DECODER_VERSION, DEFAULT_MAX_PIXELS, printable
from mobiface_tf.data.manifest import MANIFEST, write_manifest
from mobiface_tf.data.prepare_convert import convert, init_worker, start_pool
from mobiface_tf.data.prepare_inputs import exclude_identities, exclude_named, input_stat, list_inputs
from mobiface_tf.data.sources import recordio_class_names
from mobiface_tf.data.teacher_shards import add_teacher
from mobiface_tf.locks import OutputLock

IMAGES_PER_SHARD = 10_000


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
    with OutputLock(out):
        return _prepare(input_path, output, *args, **kwargs)


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
        (see mobiface_tf.data.teacher_shards.add_teacher). teacher_preprocess: its pixel convention (default:
        what the model states, else raw).

    Raises:
      ValueError: bad settings or input (the message says what to do); RecordIOError for a malformed .rec.
    """
    if align not in ("auto", "mtcnn", "none"):
        raise ValueError(f"--align must be auto, mtcnn or none, got {align!r}")
    input_path = os.path.abspath(input_path)
    if bool(exclude_pairs) != bool(exclude_folds):
        raise ValueError("exclude_pairs and exclude_folds go together (e.g. pairs.txt and folds 1,2,3)")
    merged: list[dict] = []

    def on_merge(name, folders):  # folders of one name under the name rule: one class, said once
        from mobiface_tf.identity_folders import merge_message
        merged.append({"identity": name, "folders": folders})
        print(f"prepare: warning: {merge_message(name, folders)}", file=sys.stderr, flush=True)

    tasks, class_names, source_kind, limit, excluded, excluded_names = _select_inputs(
        input_path, unlabelled, exclude_pairs, exclude_folds, exclude_names, on_merge)
    cfg = {"input": input_path, "align": align, "max_pixels": max_pixels, "min_face_size": min_face_size,
           "label_limit": limit, "decoder": DECODER_VERSION}
    plan = _plan_shards(tasks, cfg, shards, Path(output))
    workers = workers or os.cpu_count() or 1
    infos = {s: plan.done_info(s) for s in range(plan.num_shards)}
    _write_shards(plan, infos, cfg, workers, progress)
    manifest = _manifest(plan, infos, cfg, class_names, source_kind, excluded, excluded_names)
    manifest["merged_identities"] = merged
    write_manifest(plan.out, manifest)
    if teacher:
        manifest = add_teacher(plan.out, teacher, preprocess=teacher_preprocess, num_threads=teacher_threads,
                               progress=progress)
    return manifest


def _select_inputs(input_path, unlabelled, exclude_pairs, exclude_folds, exclude_names, on_merge=None):
    """The inputs to convert, after the exclusions: (tasks, class_names, source kind, RecordIO label limit,
    the manifest's "excluded" record or None, its "excluded_names" record or None). ValueError when an
    exclusion needs an image folder, or leaves no input. on_merge(name, folders): identity folders of one name
    merged into one class (mobiface_tf.identity_folders.list_identity_tree)."""
    tasks, class_names, source_kind, limit = list_inputs(input_path, unlabelled, on_merge=on_merge)
    excluded = None
    if exclude_pairs:
        if source_kind != "image_folder":
            raise ValueError("--exclude_pairs needs an <identity>/<image> folder tree as --input (LFW names the "
                             f"people by folder); got a {source_kind}")
        before = len(tasks)
        tasks, class_names, excluded = exclude_identities(tasks, class_names, exclude_pairs, exclude_folds)
        excluded["num_images"] = before - len(tasks)
        if not tasks:
            raise ValueError(f"every input image belongs to a person in folds {exclude_folds} of {exclude_pairs}")
    excluded_names = None
    if exclude_names:
        if source_kind != "image_folder":
            raise ValueError("--exclude_names needs an <identity>/<image> folder tree as --input (people are named "
                             f"by folder); got a {source_kind}")
        tasks, class_names, excluded_names = exclude_named(tasks, class_names, exclude_names)
        if not tasks:
            raise ValueError(f"every input image belongs to a person listed in {exclude_names}")
    return tasks, class_names, source_kind, limit, excluded, excluded_names


# ----------------------------------------------------------------------------------------------- resume check
@dataclass
class _ShardPlan:
    """Which inputs go to which shard (input i to shard i % num_shards), and the fingerprints a rerun compares."""
    tasks: list
    stats: list
    num_shards: int
    fingerprint: str  # settings + the input list, one for all shards
    out: Path
    names: list
    input_path: str
    rebuilt: list = field(default_factory=list)  # [{shard, reason}] for the manifest

    @property
    def n(self) -> int:
        return len(self.tasks)

    def indices(self, s: int) -> range:
        return range(s, self.n, self.num_shards)

    def inputs(self, s: int) -> dict:
        """{input file (printable: a name that is not UTF-8 escaped): [size, mtime_ns]} of the inputs in shard `s`."""
        tasks = self.tasks
        return {printable(tasks[i][2] if tasks[i][1] == "file" else tasks[i][2][0]): self.stats[i]
                for i in self.indices(s)}

    def shard_fingerprint(self, s: int) -> str:
        return hashlib.sha1(json.dumps([self.fingerprint, self.inputs(s)], sort_keys=True).encode()).hexdigest()

    def done_info(self, s: int) -> dict | None:
        """Shard `s`'s done-file record when it is complete and still matches this run; else None (the shard is
        rewritten; when it existed, why is printed and kept in `rebuilt`)."""
        name = self.names[s]
        shard, done = self.out / name, self.out / (name + ".done.json")
        if not (shard.exists() and done.exists()):
            return None
        info = json.loads(done.read_text())
        if info.get("fingerprint") != self.shard_fingerprint(s) or info.get("bytes") != shard.stat().st_size:
            old = info.get("inputs") or {}
            new = self.inputs(s)
            if info.get("fingerprint_all") == self.fingerprint and old:
                changed = sorted(os.path.relpath(p, printable(self.input_path)) for p in new if old.get(p) != new[p])
                why = f"{len(changed)} input(s) changed since it was written (e.g. {changed[0]})" if changed else \
                    "its file changed"
            else:
                why = "the settings or the list of inputs changed (inputs added or removed)"
            self.rebuilt.append({"shard": name, "reason": why})
            print(f"prepare: rebuilding {name}: {why}", file=sys.stderr)
            return None
        return info


def _plan_shards(tasks, cfg: dict, shards: int | None, out: Path) -> _ShardPlan:
    """The shard plan for `tasks`; checks `out` holds no other run's shards, and drops leftover temp files and
    the manifest (rewritten last, so its presence always means "complete")."""
    from mobiface_tf.data.tfrecord import shard_name

    n = len(tasks)
    num_shards = shards or max(1, math.ceil(n / IMAGES_PER_SHARD))
    num_shards = min(num_shards, n)
    out.mkdir(parents=True, exist_ok=True)
    names = [shard_name(s, num_shards) for s in range(num_shards)]
    stale = sorted(set(os.path.basename(p) for p in glob.glob(str(out / "train-*-of-*.tfrecord"))) - set(names))
    if stale:
        raise ValueError(f"--output '{out}' holds shards of another run ({stale[0]} ...); use an empty --output")
    # Leftovers of a killed run (never complete; the output lock says no other run writes here): mobiface_tf.atomic's
    # hidden temp files, and the "*.tmp-PID" ones of older versions.
    for tmp in [*glob.glob(str(out / "*.tmp-*")), *leftover_temps(out)]:
        os.remove(tmp)
    manifest_path = out / MANIFEST
    if manifest_path.exists():
        manifest_path.unlink()  # rewritten last, so its presence always means "complete"
    # Settings and the input list (adding or removing an input moves others to other shards) are one
    # fingerprint for all shards; each shard's also covers the size and mtime of every input it holds, so a
    # file fixed, replaced or rewritten since rebuilds exactly the shards it lands in.
    fingerprint = hashlib.sha1(json.dumps(
        [cfg, num_shards, [t[2] for t in tasks], [t[3] for t in tasks]], sort_keys=True, default=str).encode()
    ).hexdigest()
    return _ShardPlan(tasks, [input_stat(t) for t in tasks], num_shards, fingerprint, out, names, cfg["input"])


# ----------------------------------------------------------------------------------------------- shard writing
def _write_shards(plan: _ShardPlan, infos: dict, cfg: dict, workers: int, progress: bool) -> None:
    """Convert and write every shard whose `infos` entry is None (filled in as each is done), with a pool of
    `workers` processes. Ctrl-C: KeyboardInterrupt saying how many shards are kept; a write error: OSError."""
    from tqdm import tqdm

    todo = [s for s in range(plan.num_shards) if infos[s] is None]
    work = [plan.tasks[i] for s in todo for i in plan.indices(s)]
    bar = tqdm(total=plan.n, initial=plan.n - len(work), unit="img", disable=not progress, file=sys.stderr,
               desc=f"prepare ({cfg['align']}, {workers} workers)")
    pool = None
    if workers > 1 and work:
        pool = start_pool(workers, cfg)
        results = pool.imap(convert, work, chunksize=4)
    else:
        init_worker(cfg)
        results = map(convert, work)
    try:
        for s in todo:
            infos[s] = _write_shard(plan, s, results, bar)
    except KeyboardInterrupt:  # Ctrl-C: finished shards stay (each has its done-file); the rerun skips them
        kept = sum(info is not None for info in infos.values())
        raise KeyboardInterrupt(f"{kept} of {plan.num_shards} shards finished and kept in {plan.out}; rerun the "
                                "same command to resume") from None
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()


def _write_shard(plan: _ShardPlan, s: int, results, bar) -> dict:
    """Write shard `s` from the next converted inputs in `results`, then its done-file; returns that record.
    A failed write (a full disk) drops this shard only: OSError saying finished shards are kept."""
    import tensorflow as tf

    from mobiface_tf.data.tfrecord import AtomicShardWriter, make_example

    out, name = plan.out, plan.names[s]
    writer = AtomicShardWriter(out / name)
    info = {"fingerprint": plan.shard_fingerprint(s), "fingerprint_all": plan.fingerprint,
            "inputs": plan.inputs(s), "num_inputs": 0, "num_images": 0, "skipped": [],
            "class_counts": {}, "aligned_by": {"mtcnn": 0, "none": 0}, "multi_face": 0}
    try:
        for _ in plan.indices(s):
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
        write_json_atomic(out / (name + ".done.json"), info)
    except (OSError, tf.errors.OpError) as e:  # a full disk: this shard is dropped, finished ones kept
        try:
            writer.abort()
        except (OSError, tf.errors.OpError):
            pass  # the temp file may not even close on a full disk; the rerun deletes it
        detail = " ".join(str(getattr(e, "strerror", None) or getattr(e, "message", None) or e).split())
        raise OSError(getattr(e, "errno", None), f"cannot write shard {str(out / name)!r} "
                      f"({detail[:200]}); free space and rerun the same command: finished shards are kept") \
            from None
    except BaseException:
        writer.abort()
        raise
    return info


# ----------------------------------------------------------------------------------------------- manifest, last
def _manifest(plan: _ShardPlan, infos: dict, cfg: dict, class_names, source_kind: str, excluded,
              excluded_names) -> dict:
    """The manifest from every shard's done record; RuntimeError when the counts do not add up."""
    n, input_path, num_shards = plan.n, plan.input_path, plan.num_shards
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
        "source": source_kind, "input": printable(input_path), "align": cfg["align"], "max_pixels": cfg["max_pixels"],
        "min_face_size": cfg["min_face_size"], "num_inputs": n, "num_images": num_images,
        "num_classes": num_classes,
        "class_names": class_names, "class_counts": [counts.get(c, 0) for c in range(num_classes)],
        "aligned_by": {k: sum(i["aligned_by"][k] for i in infos.values()) for k in ("mtcnn", "none")},
        "multi_face": sum(i["multi_face"] for i in infos.values()),
        "excluded": excluded,
        "excluded_names": excluded_names,
        "skipped": skipped,
        "shards": [{"file": plan.names[s], "num_images": infos[s]["num_images"], "bytes": infos[s]["bytes"]}
                   for s in range(num_shards)],
        "rebuilt": plan.rebuilt,
    }
    if sum(manifest["class_counts"]) != num_images:
        raise RuntimeError(f"internal accounting error: class counts sum to {sum(manifest['class_counts'])}, "
                           f"not {num_images} images")
    return manifest
