"""CFP (Celebrities in Frontal-Profile; Sengupta et al., WACV 2016): the official 10-fold FF and FP protocols.

Layout of the benchmark folder (`cfp_dir`):

  Protocol/Pair_list_F.txt   `<n> <path>` lines: frontal image numbers 1..5000, paths relative to Protocol/
  Protocol/Pair_list_P.txt   the same for profile numbers 1..2000
  Protocol/Split/<FF|FP>/<01..10>/same.txt, diff.txt   350 `i,j` lines each; FF: two frontal numbers,
                             FP: a frontal number, then a profile number
  Data/Images/<NNN>/<frontal|profile>/<NN>.jpg, Data/list_name.txt (the 500 names, with spaces)

The folds are identity-disjoint; CFP's README asks for 10-fold cross-validation (the threshold chosen on the
other folds) and for accuracy (mean and std), AUC and EER.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from mobiface_tf.data.verification.lfw import Pair

PROTOCOLS = ("FF", "FP")
_PAIR_LINE = re.compile(r"\s*(\d+)\s*,\s*(\d+)\s*")


def _protocol_dir(cfp_dir) -> Path:
    root = Path(cfp_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"CFP folder not found: {str(root)!r}; pass --cfp_dir=DIR holding Protocol/ and Data/")
    proto = root / "Protocol"
    if not proto.is_dir():
        raise FileNotFoundError(f"{str(root)!r} has no Protocol/ folder; --cfp_dir must be the CFP root (the folder "
                                "holding Protocol/ and Data/)")
    return proto


def read_pair_list(path) -> dict[int, Path]:
    """A CFP `Pair_list_F.txt` / `Pair_list_P.txt`: {image number: path}, each path resolved against the list's
    folder (CFP writes them relative to Protocol/, e.g. `../Data/Images/001/frontal/01.jpg`).

    Raises FileNotFoundError when the list is missing, ValueError naming file and line for a malformed or
    repeated number.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CFP image list not found: {str(path)!r}")
    out = {}
    for line_no, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(maxsplit=1)
        if len(fields) != 2 or not fields[0].isdigit():
            raise ValueError(f"{path}:{line_no}: expected '<number> <relative path>', got {line!r}")
        number = int(fields[0])
        if number in out:
            raise ValueError(f"{path}:{line_no}: image number {number} is listed twice")
        out[number] = Path(os.path.normpath(path.parent / fields[1].strip()))  # ../Data/... -> Data/...
    if not out:
        raise ValueError(f"{path} lists no images")
    return out


def _read_split_file(path: Path, first: dict, second: dict, issame: bool, fold: int) -> list[Pair]:
    if not path.is_file():
        raise FileNotFoundError(f"CFP split file not found: {str(path)!r}")
    pairs = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        m = _PAIR_LINE.fullmatch(line)
        if not m:
            raise ValueError(f"{path}:{line_no}: expected a pair of image numbers 'i,j', got {line!r}")
        i, j = int(m.group(1)), int(m.group(2))
        for n, table, kind in ((i, first, "first"), (j, second, "second")):
            if n not in table:
                raise ValueError(f"{path}:{line_no}: {kind} image number {n} is not in its Pair_list file "
                                 f"(numbers 1..{max(table)})")
        pairs.append(Pair(first[i], second[j], issame, fold))
    return pairs


def cfp_fold_names(cfp_dir, protocol: str) -> list[str]:
    """The fold folder names of Protocol/Split/<protocol>/ in numeric order (`01`..`10` in the official set)."""
    protocol = check_protocol(protocol)
    split = _protocol_dir(cfp_dir) / "Split" / protocol
    if not split.is_dir():
        raise FileNotFoundError(f"CFP split folder not found: {str(split)!r}")
    folds = sorted((d.name for d in split.iterdir() if d.is_dir() and d.name.isdigit()), key=int)
    if not folds:
        raise ValueError(f"{split} holds no numbered fold folders (expected 01..10)")
    return folds


def check_protocol(protocol: str) -> str:
    """'FF' or 'FP' (any case) -> the upper-case name; ValueError for anything else."""
    name = str(protocol).upper()
    if name not in PROTOCOLS:
        raise ValueError(f"--cfp_protocol must be FF (frontal-frontal) or FP (frontal-profile), got {protocol!r}")
    return name


def read_cfp_pairs(cfp_dir, protocol: str) -> list[Pair]:
    """The pairs of CFP's FF or FP protocol: [Pair(path_a, path_b, issame, fold)], folds 0-based in folder order,
    each fold's same.txt pairs then its diff.txt pairs. FP pairs are (frontal, profile).

    Every image number goes through Pair_list_F.txt (FP: the second through Pair_list_P.txt), and every image must
    exist. Raises FileNotFoundError (missing folder, file or images; the message says which) or ValueError
    (malformed line, unknown number, bad protocol name), naming the file and line.
    """
    protocol = check_protocol(protocol)
    proto = _protocol_dir(cfp_dir)
    frontal = read_pair_list(proto / "Pair_list_F.txt")
    second = frontal if protocol == "FF" else read_pair_list(proto / "Pair_list_P.txt")
    pairs = []
    for fold, name in enumerate(cfp_fold_names(cfp_dir, protocol)):
        folder = proto / "Split" / protocol / name
        pairs += _read_split_file(folder / "same.txt", frontal, second, True, fold)
        pairs += _read_split_file(folder / "diff.txt", frontal, second, False, fold)
    missing = sorted({p for pair in pairs for p in (pair.path_a, pair.path_b) if not p.is_file()})
    if missing:
        shown = ", ".join(repr(str(p)) for p in missing[:3])
        raise FileNotFoundError(f"{len(missing)} image(s) named by the CFP {protocol} protocol are missing, e.g. "
                                f"{shown}; check that --cfp_dir holds the Data/Images folder the Pair_list files name")
    return pairs
