"""LFW View 2 `pairs.txt` and identity listing of an image-folder tree.

`pairs.txt` (Huang et al., LFW technical report, View 2) starts with a line "10\t300": ten folds, each
300 same-person lines `name i j` followed by 300 different-person lines `name1 i name2 j`.
The fold structure is part of the protocol, so the reader keeps it.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from mobiface_tf.identity_folders import find_image, folders_by_key, identity_key, list_identity_tree
from mobiface_tf.images import IMAGE_EXTENSIONS


class Pair(NamedTuple):
    """One LFW View 2 pair: the two image paths, whether they show the same person, and its 0-based fold."""

    path_a: Path
    path_b: Path
    issame: bool
    fold: int


def lfw_image_path(lfw_dir: Path, name: str, index: int, variants=None) -> Path:
    """LFW naming: <dir>/<Name>/<Name>_<NNNN>.<ext>, indices start at 1.

    The first supported extension that exists (mobiface_tf.images.IMAGE_EXTENSIONS, any case: a folder
    converted to PNG works); when none does, the .jpg path, which does not exist. `variants` (a callable
    returning identity_folders.folders_by_key of lfw_dir): when the photo is not in <Name>/, the folders whose
    names are <Name> under the name rule (`colin_powell/`, `Colin Powell/`) are searched too, for
    <Name>_<NNNN> or <folder>_<NNNN>: one person's photos, whichever spelling of the folder holds them.
    """
    folder, stem = Path(lfw_dir) / name, f"{name}_{index:04d}"
    found = find_image(folder, stem)
    if found is None and variants is not None:
        for other in variants().get(identity_key(name), []):
            found = find_image(other, stem) or find_image(other, f"{other.name}_{index:04d}")
            if found is not None:
                break
    return found or folder / (stem + ".jpg")


def _parse_index(text: str, pairs_file: Path, line_no: int) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{pairs_file}:{line_no}: image index {text!r} is not a positive integer")
    return int(text)


def read_lfw_pairs(pairs_file, lfw_dir) -> list[Pair]:
    """Parse an LFW View 2 `pairs.txt` into [Pair(path_a, path_b, issame, fold)], folds 0..n_folds-1.

    Every line is validated against the fold layout announced by the header, and every referenced image
    must exist; errors name the file and line. A person's photos are also found in folders whose names are
    theirs under the name rule (lfw_image_path: `colin_powell/` for `Colin_Powell`).
    """
    pairs_file, lfw_dir = Path(pairs_file), Path(lfw_dir)
    if not pairs_file.is_file():
        raise FileNotFoundError(f"pairs file not found: {str(pairs_file)!r}. Pass --pairs=path/to/pairs.txt")
    if not lfw_dir.is_dir():
        raise FileNotFoundError(f"LFW image dir not found: {str(lfw_dir)!r}. Pass --lfw_dir=DIR holding <Name>/<Name>_NNNN.jpg")
    # utf-8-sig drops the byte-order mark some Windows editors write; text mode reads CRLF and CR line ends.
    lines = [ln for ln in pairs_file.read_text(encoding="utf-8-sig").splitlines()]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise ValueError(f"{pairs_file} is empty; expected an LFW View 2 pairs.txt starting with '10\\t300'")
    header = lines[0].split()
    if len(header) != 2 or not all(h.isdigit() and int(h) > 0 for h in header):
        raise ValueError(f"{pairs_file}:1: header {lines[0]!r} should be '<num_folds> <pairs_per_class>', e.g. '10\\t300'")
    num_folds, per_class = int(header[0]), int(header[1])
    expected = num_folds * 2 * per_class
    body = lines[1:]
    if len(body) != expected:
        raise ValueError(f"{pairs_file}: header {lines[0]!r} announces {expected} pair lines but the file has {len(body)}")

    pairs, missing = [], []
    listed = []

    def variants():  # listed once, on the first photo not found under its exact folder name
        if not listed:
            listed.append(folders_by_key(lfw_dir))
        return listed[0]

    for k, line in enumerate(body):
        line_no = k + 2
        fold, pos_in_fold = divmod(k, 2 * per_class)
        issame = pos_in_fold < per_class
        fields = line.split()
        if issame:
            if len(fields) != 3:
                raise ValueError(f"{pairs_file}:{line_no}: expected a same-person line 'name i j' "
                                 f"(fold {fold}, first {per_class} lines), got {line!r}")
            a = lfw_image_path(lfw_dir, fields[0], _parse_index(fields[1], pairs_file, line_no), variants)
            b = lfw_image_path(lfw_dir, fields[0], _parse_index(fields[2], pairs_file, line_no), variants)
        else:
            if len(fields) != 4:
                raise ValueError(f"{pairs_file}:{line_no}: expected a different-person line 'name1 i name2 j' "
                                 f"(fold {fold}, last {per_class} lines), got {line!r}")
            a = lfw_image_path(lfw_dir, fields[0], _parse_index(fields[1], pairs_file, line_no), variants)
            b = lfw_image_path(lfw_dir, fields[2], _parse_index(fields[3], pairs_file, line_no), variants)
        missing += [p for p in (a, b) if not p.is_file()]
        pairs.append(Pair(a, b, issame, fold))
    if missing:
        shown = ", ".join(repr(str(p.with_suffix(""))) for p in missing[:3])
        raise FileNotFoundError(f"{len(missing)} image(s) referenced by {pairs_file} are missing under {str(lfw_dir)!r}, "
                                f"e.g. {shown} (tried extensions {', '.join(IMAGE_EXTENSIONS)}). Check --lfw_dir "
                                "points at the folder of <Name>/ subfolders")
    return pairs


def lfw_fold_identities(pairs_file, folds) -> set[str]:
    """Every person named in the given 1-based folds of an LFW View 2 pairs.txt (images need not exist).

    View 2's ten folds are identity-disjoint, so leaving these people out of training and scoring only those
    folds measures a model on people it has never seen. Raises ValueError for a fold outside 1..num_folds
    or a malformed file, FileNotFoundError when the file is missing.
    """
    pairs_file = Path(pairs_file)
    if not pairs_file.is_file():
        raise FileNotFoundError(f"pairs file not found: {str(pairs_file)!r}. Pass --exclude_pairs=path/to/pairs.txt")
    lines = [ln for ln in pairs_file.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
    header = lines[0].split() if lines else []
    if len(header) != 2 or not all(h.isdigit() and int(h) > 0 for h in header):
        raise ValueError(f"{pairs_file}:1: header should be '<num_folds> <pairs_per_class>', e.g. '10\\t300'")
    num_folds, per_class = int(header[0]), int(header[1])
    bad = [f for f in folds if not 1 <= int(f) <= num_folds]
    if bad:
        raise ValueError(f"folds {bad} are outside 1..{num_folds} of {pairs_file}")
    if len(lines) - 1 != num_folds * 2 * per_class:
        raise ValueError(f"{pairs_file}: header announces {num_folds * 2 * per_class} pair lines but the file has "
                         f"{len(lines) - 1}")
    wanted = {int(f) - 1 for f in folds}
    people = set()
    for k, line in enumerate(lines[1:]):
        if k // (2 * per_class) in wanted:
            fields = line.split()
            people.update(fields[0::2] if len(fields) == 4 else fields[:1])
    return people


def list_identities(image_dir, min_images: int = 2, max_per_identity: int | None = None,
                    max_images: int | None = None) -> list[tuple[str, list[Path]]]:
    """Identities (sorted by name) of a `<identity>/<image>` tree with at least `min_images` images.

    Listed by mobiface_tf.identity_folders.list_identity_tree (every supported extension, photos in sub-folders belong
    to their identity, hidden entries ignored). Used to draw MegaFace-style probes from LFW. Caps keep the
    selection small and deterministic. Raises FileNotFoundError when `image_dir` is not a directory.
    """
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image dir not found: {str(image_dir)!r}")
    out, total = [], 0
    for name, files in list_identity_tree(image_dir)[0]:
        if len(files) < min_images:
            continue
        files = files[:max_per_identity] if max_per_identity else files
        if max_images is not None and total + len(files) > max_images:
            files = files[: max_images - total]
            if len(files) < min_images:
                break
        out.append((name, files))
        total += len(files)
    return out
