"""Verification sets: LFW View 2 `pairs.txt` and InsightFace `.bin` files.

`pairs.txt` (Huang et al., LFW technical report, View 2) starts with a line "10\t300": ten folds, each
300 same-person lines `name i j` followed by 300 different-person lines `name1 i name2 j`.
The fold structure is part of the protocol, so the reader keeps it.

An InsightFace `.bin` is a pickle of `(list of JPEG byte strings, list of issame bools)`. A pickle can
run arbitrary code when loaded, so it is read with an unpickler that resolves only the handful of
globals those files really use (numpy array reconstruction, a few builtins) and refuses the rest.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import NamedTuple

import numpy as np


class Pair(NamedTuple):
    path_a: Path
    path_b: Path
    issame: bool
    fold: int


def lfw_image_path(lfw_dir: Path, name: str, index: int) -> Path:
    """LFW naming: <dir>/<Name>/<Name>_<NNNN>.jpg, indices start at 1."""
    return Path(lfw_dir) / name / f"{name}_{index:04d}.jpg"


def _parse_index(text: str, pairs_file: Path, line_no: int) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{pairs_file}:{line_no}: image index {text!r} is not a positive integer")
    return int(text)


def read_lfw_pairs(pairs_file, lfw_dir) -> list[Pair]:
    """Parse an LFW View 2 `pairs.txt` into [Pair(path_a, path_b, issame, fold)], folds 0..n_folds-1.

    Every line is validated against the fold layout announced by the header, and every referenced image
    must exist; errors name the file and line.
    """
    pairs_file, lfw_dir = Path(pairs_file), Path(lfw_dir)
    if not pairs_file.is_file():
        raise FileNotFoundError(f"pairs file not found: {str(pairs_file)!r}. Pass --pairs=path/to/pairs.txt")
    if not lfw_dir.is_dir():
        raise FileNotFoundError(f"LFW image dir not found: {str(lfw_dir)!r}. Pass --lfw_dir=DIR holding <Name>/<Name>_NNNN.jpg")
    lines = [ln for ln in pairs_file.read_text().splitlines()]
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
    for k, line in enumerate(body):
        line_no = k + 2
        fold, pos_in_fold = divmod(k, 2 * per_class)
        issame = pos_in_fold < per_class
        fields = line.split()
        if issame:
            if len(fields) != 3:
                raise ValueError(f"{pairs_file}:{line_no}: expected a same-person line 'name i j' "
                                 f"(fold {fold}, first {per_class} lines), got {line!r}")
            a = lfw_image_path(lfw_dir, fields[0], _parse_index(fields[1], pairs_file, line_no))
            b = lfw_image_path(lfw_dir, fields[0], _parse_index(fields[2], pairs_file, line_no))
        else:
            if len(fields) != 4:
                raise ValueError(f"{pairs_file}:{line_no}: expected a different-person line 'name1 i name2 j' "
                                 f"(fold {fold}, last {per_class} lines), got {line!r}")
            a = lfw_image_path(lfw_dir, fields[0], _parse_index(fields[1], pairs_file, line_no))
            b = lfw_image_path(lfw_dir, fields[2], _parse_index(fields[3], pairs_file, line_no))
        missing += [p for p in (a, b) if not p.is_file()]
        pairs.append(Pair(a, b, issame, fold))
    if missing:
        shown = ", ".join(repr(str(p)) for p in missing[:3])
        raise FileNotFoundError(f"{len(missing)} image(s) referenced by {pairs_file} are missing under {str(lfw_dir)!r}, "
                                f"e.g. {shown}. Check --lfw_dir points at the folder of <Name>/ subfolders")
    return pairs


def list_identities(image_dir, min_images: int = 2, max_per_identity: int | None = None,
                    max_images: int | None = None) -> list[tuple[str, list[Path]]]:
    """Identities (sorted by name) of a `<identity>/<image>` tree with at least `min_images` .jpg/.png images.

    Used to draw MegaFace-style probes from LFW. Caps keep the selection small and deterministic.
    """
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise FileNotFoundError(f"image dir not found: {str(image_dir)!r}")
    out, total = [], 0
    for person in sorted(p for p in image_dir.iterdir() if p.is_dir()):
        files = sorted(f for f in person.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if len(files) < min_images:
            continue
        files = files[:max_per_identity] if max_per_identity else files
        if max_images is not None and total + len(files) > max_images:
            files = files[: max_images - total]
            if len(files) < min_images:
                break
        out.append((person.name, files))
        total += len(files)
    return out


# ---------------------------------------------------------------- restricted .bin unpickling

class BinRefused(pickle.UnpicklingError):
    """The .bin asked for something a verification set never holds; nothing from it was executed."""


def _safe_dtype(spec, *args):
    """numpy.dtype, but never an object dtype: object arrays would unpickle arbitrary Python objects."""
    dtype = np.dtype(spec, *args)
    if dtype.hasobject:
        raise BinRefused(f"refusing numpy object dtype {spec!r} in a .bin (only plain numeric arrays are allowed)")
    return dtype


def _latin1_encode(text, encoding="latin1"):
    """_codecs.encode as protocol-2 pickles use it to rebuild bytes; only the latin-1 round trip is allowed."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise BinRefused(f"refusing _codecs.encode with encoding {encoding!r} in a .bin")
    return text.encode("latin1")


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ModuleNotFoundError:  # numpy 1.x keeps it under numpy.core
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: _safe_dtype,
    ("_codecs", "encode"): lambda: _latin1_encode,
    **{(mod, name): (lambda name=name: getattr(__import__("builtins"), name))
       for mod in ("builtins", "__builtin__")
       for name in ("bytes", "bytearray", "bool", "int", "float", "list", "tuple", "dict", "set", "frozenset")},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file, encoding="bytes")  # Python 2 str -> bytes, as the JPEG payloads are binary
        self._source = source

    def find_class(self, module, name):
        factory = _ALLOWED.get((module, name))
        if factory is None:
            raise BinRefused(
                f"refusing to load global {module}.{name} from {self._source!r}: a verification .bin may only hold "
                "bytes, bools, ints and numeric numpy arrays. The file is not a plain InsightFace .bin; do not trust it")
        return factory()


def read_bin(path) -> tuple[list[bytes], np.ndarray]:
    """Read an InsightFace verification .bin -> (encoded images, issame bool array of len(images)//2).

    Pair k is (images[2k], images[2k+1]). Loading never executes code from the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f".bin file not found: {str(path)!r}. Pass --bin=path/to/lfw.bin")
    with path.open("rb") as f:
        try:
            obj = _RestrictedUnpickler(io.BufferedReader(f), str(path)).load()
        except BinRefused:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as e:
            raise ValueError(f"{str(path)!r} is not a readable .bin pickle ({type(e).__name__}: {e}); "
                             "expected InsightFace's (list of JPEG bytes, list of issame bools)") from e
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise ValueError(f"{str(path)!r} holds a {type(obj).__name__}, expected a (images, issame) pair")
    images, issame = obj
    images = [bytes(x) if isinstance(x, (bytes, bytearray)) else
              (x.tobytes() if isinstance(x, np.ndarray) and x.dtype == np.uint8 else None) for x in images]
    if any(x is None for x in images):
        raise ValueError(f"{str(path)!r}: every image must be encoded bytes")
    issame = np.asarray(issame)
    if issame.ndim != 1 or issame.dtype.kind not in "bi":
        raise ValueError(f"{str(path)!r}: issame must be a flat list of bools, got dtype {issame.dtype} shape {issame.shape}")
    if len(images) != 2 * len(issame):
        raise ValueError(f"{str(path)!r}: {len(images)} images for {len(issame)} pairs; expected exactly two images per pair")
    return images, issame.astype(bool)
