"""One training set from several face datasets, with every person a benchmark scores left out, by name.

    build_multisource([Source("lfw", "lfw-112x112", "none"), Source("glint", "glint_sample", "none"),
                       Source("celeba", "celeba_small", "mtcnn")], "runs/multi",
                      lfw_pairs="lfw/pairs.txt", lfw_folds=[1, 2, 3], names_files=["cfp/Data/list_name.txt"])

The people scored later are (1) everyone named in the held-out LFW View 2 folds and (2) everyone in the names
files (CFP's 500 names, with spaces). They are compared across datasets by mobiface_tf.data.people.canonical_name
(spaces = underscores, any case, Unicode NFC), so `Leonardo Dicaprio` (CFP) removes glint's and LFW's
`Leonardo_DiCaprio`. Each source becomes its own shard folder OUTPUT/<name>/ (written by
mobiface_tf.data.prepare.prepare, which records unalignable faces with their reason in its manifest's
"skipped"), and OUTPUT/sources.json lists every source, every person left out and why, and the exclusion list
itself (OUTPUT/excluded_names.txt). Train on them all with --data='OUTPUT/*/train-*.tfrecord' (labels restart
at 0 in each source, so this suits distillation alone, --margin=none).

A source whose people are numbered rather than named (celeba_small: CelebA identity numbers) cannot be matched
by name; sources.json says so. CelebA's people were chosen not to overlap LFW (Sun et al., DeepID2, 2014).
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from mobiface_tf.atomic import write_json_atomic, write_text_atomic
from mobiface_tf.data import people

SOURCES_FILE = "sources.json"
NAMES_FILE = "excluded_names.txt"


class Source(NamedTuple):
    """One dataset: a short name (its output folder), an <identity>/<image> tree, and prepare's --align."""
    name: str
    path: str
    align: str = "auto"


def scored_people(lfw_pairs=None, lfw_folds=None, names_files=()) -> dict[str, list[str]]:
    """{canonical name: [reasons]} of every person scored later: those named in `lfw_folds` (1-based) of an LFW
    View 2 `lfw_pairs`, and those listed in each names file. Raises FileNotFoundError / ValueError as
    lfw_fold_identities and people.read_names_file do."""
    from mobiface_tf.data.verification import lfw_fold_identities

    reasons: dict[str, list[str]] = {}
    if lfw_pairs:
        folds = sorted(int(f) for f in lfw_folds)
        why = f"in LFW View 2 folds {','.join(map(str, folds))} ({Path(lfw_pairs).name})"
        for name in lfw_fold_identities(lfw_pairs, folds):
            reasons.setdefault(people.canonical_name(name), []).append(why)
    for f in names_files:
        why = f"listed in {Path(f).parent.name + '/' if Path(f).parent.name else ''}{Path(f).name}"
        for name in people.read_names_file(f):
            reasons.setdefault(name, []).append(why)
    return reasons


def _numbered(path: str) -> bool:
    """True when every identity folder of the tree is a number (no names to match)."""
    dirs = [d.name for d in Path(path).iterdir() if d.is_dir()]
    return bool(dirs) and all(d.isdigit() for d in dirs)


def build_multisource(sources: list[Source], output, lfw_pairs=None, lfw_folds=None, names_files=(),
                      teacher=None, workers: int | None = None, progress: bool = True) -> dict:
    """Prepare each source into OUTPUT/<name>/ with every scored person left out; returns (and writes)
    OUTPUT/sources.json.

    Raises ValueError (one line) for duplicate or unsafe source names, a missing source folder, or nothing to
    exclude (neither LFW folds nor a names file: a training set must leave out the people it is scored on).
    """
    from mobiface_tf.data.prepare import prepare

    names = [s.name for s in sources]
    if len(set(names)) != len(names) or any(not n or "/" in n or n.startswith(".") for n in names):
        raise ValueError(f"source names must be distinct folder names, got {names}")
    for s in sources:
        if not Path(s.path).is_dir():
            raise ValueError(f"source {s.name!r}: folder not found: {s.path!r}")
    reasons = scored_people(lfw_pairs, lfw_folds, names_files)
    if not reasons:
        raise ValueError("nothing to leave out: give the LFW pairs and folds and/or a names file of the people the "
                         "model will be scored on")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    names_path = out / NAMES_FILE
    write_text_atomic(names_path, "# people scored later (mobiface_tf.data.multisource); canonical names\n" +
                      "\n".join(sorted(reasons)) + "\n")
    record = {"excluded_names_file": NAMES_FILE, "num_people_scored": len(reasons), "sources": []}
    for s in sources:
        manifest = prepare(s.path, str(out / s.name), align=s.align, workers=workers, progress=progress,
                           exclude_names=str(names_path), teacher=teacher)
        left = manifest.get("excluded_names") or {}
        entry = {"name": s.name, "input": str(Path(s.path).resolve()), "align": s.align, "output": s.name,
                 "num_images": manifest["num_images"], "num_classes": manifest["num_classes"],
                 "skipped": len(manifest.get("skipped") or []),
                 "excluded": {"num_identities": left.get("num_identities", 0),
                              "num_images": left.get("num_images", 0),
                              "identities": {n: reasons[people.canonical_name(n)] for n in left.get("identities", [])}}}
        if _numbered(s.path):
            entry["note"] = ("identities are numbers, not names: no person of this source can be matched by name "
                             "against the scored people")
        record["sources"].append(entry)
    write_json_atomic(out / SOURCES_FILE, record, indent=1, ensure_ascii=False)
    return record
