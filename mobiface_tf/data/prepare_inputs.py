"""The inputs of prepare_data: listing (image-folder tree, flat folder of unlabelled faces, RecordIO), leaving
out people (the held-out LFW folds, a names file), and the file stats that decide which shards a rerun rebuilds.

A task is (index, kind, ref, label): kind "file" (ref: path), "rec" (ref: (rec path, key)) or "skip" (ref:
(path, reason), an entry the listing left out, counted and listed in the manifest).
"""
from __future__ import annotations

import os
from pathlib import Path

from mobiface_tf.identity_folders import log_merge
from mobiface_tf.images import list_images, printable
from mobiface_tf.data.sources import RecordIOReader, label_limit, list_image_folder

def list_inputs(input_path: str, unlabelled: bool = False, on_merge=None):
    """-> (tasks [(index, kind, ref, label)], class_names or None for RecordIO, source kind, RecordIO label
    limit or None). on_merge(name, folders): identity folders of one name (mobiface_tf.identity_folders) merged
    into one class; None: a logged warning."""
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
    items, class_names, skipped = list_image_folder(input_path, on_merge=on_merge or log_merge)
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
        raise ValueError(f"--input is not a directory: '{printable(root)}'. Pass a folder of face images")
    paths, skipped = list_images(root)
    skipped = [(str(sk.path), sk.reason) for sk in skipped if sk.path.name not in MARKER_FILES]
    if not paths:
        raise ValueError(f"no image files under '{printable(root)}' (extensions {', '.join(IMAGE_EXTENSIONS)})")
    return [str(p) for p in paths], skipped


def drop_classes(tasks, class_names, drop):
    """Tasks and class names without the class indices in `drop`, re-indexed and re-labelled (skips keep None)."""
    keep_names = [name for c, name in enumerate(class_names) if c not in drop]
    relabel = {old: new for new, old in enumerate(c for c in range(len(class_names)) if c not in drop)}
    kept = [t for t in tasks if t[3] not in drop]
    tasks = [(i, kind, ref, relabel.get(label)) for i, (_, kind, ref, label) in enumerate(kept)]  # skip: None
    return tasks, keep_names


def exclude_identities(tasks, class_names, pairs_file, folds):
    """Drop every image of every person named in `folds` (1-based) of an LFW View 2 pairs.txt.

    Names are compared by mobiface_tf.data.people.canonical_name, the one name rule (as --exclude_names).
    Returns (tasks re-indexed and re-labelled, kept class names, record for the manifest).
    """
    from mobiface_tf.data.people import canonical_name
    from mobiface_tf.data.verification import lfw_fold_identities

    people = lfw_fold_identities(pairs_file, folds)
    wanted = {canonical_name(p) for p in people}
    drop = {c for c, name in enumerate(class_names) if canonical_name(name) in wanted}
    tasks, keep_names = drop_classes(tasks, class_names, drop)
    record = {"pairs": str(os.path.abspath(pairs_file)), "folds": sorted(folds),
              "people_in_folds": len(people), "num_identities": len(drop), "num_images": None}
    return tasks, keep_names, record


def exclude_named(tasks, class_names, names_file):
    """Drop every image of every person listed in a names file (mobiface_tf.data.people: spaces or underscores,
    any case, NFC). Returns (tasks, kept class names, the manifest's "excluded_names" record)."""
    from mobiface_tf.data import people

    names = people.read_names_file(names_file)
    split = people.exclude(class_names, names)
    drop = set(range(len(class_names))) - set(split.keep)
    before = len(tasks)
    tasks, keep_names = drop_classes(tasks, class_names, drop)
    record = {"names_file": str(os.path.abspath(names_file)), "people_in_file": len(names),
              "num_identities": len(split.excluded), "num_images": before - len(tasks),
              "identities": sorted(split.excluded),
              "reason": "listed in the names file (people an evaluation set scores the model on); names compared "
                        "by mobiface_tf.data.people.canonical_name (spaces = underscores, any case, Unicode NFC)"}
    return tasks, keep_names, record


def input_stat(task) -> list:
    """[size, mtime_ns] of the file behind a task (the .rec for RecordIO); [-1, -1] when it is gone."""
    _, kind, ref, _ = task
    path = ref if kind == "file" else ref[0]  # skip: (path, reason); rec: (rec path, key)
    try:
        st = os.stat(path)
        return [st.st_size, st.st_mtime_ns]
    except OSError:
        return [-1, -1]
