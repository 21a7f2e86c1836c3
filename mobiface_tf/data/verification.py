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

from mobiface_tf.images import IMAGE_EXTENSIONS, find_image, list_identity_tree


class Pair(NamedTuple):
    """One LFW View 2 pair: the two image paths, whether they show the same person, and its 0-based fold."""

    path_a: Path
    path_b: Path
    issame: bool
    fold: int


def lfw_image_path(lfw_dir: Path, name: str, index: int) -> Path:
    """LFW naming: <dir>/<Name>/<Name>_<NNNN>.<ext>, indices start at 1.

    The first supported extension that exists (mobiface_tf.images.IMAGE_EXTENSIONS, any case: a folder
    converted to PNG works); when none does, the .jpg path, which does not exist.
    """
    folder, stem = Path(lfw_dir) / name, f"{name}_{index:04d}"
    return find_image(folder, stem) or folder / (stem + ".jpg")


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

    Listed by mobiface_tf.images.list_identity_tree (every supported extension, photos in sub-folders belong
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


# ---------------------------------------------------------------- restricted .bin unpickling

class BinRefused(pickle.UnpicklingError):
    """The .bin asked for something a verification set never holds; nothing from it was executed."""


_PLAIN_KINDS = "biufc"  # bool, signed and unsigned int, float, complex: bytes in, numbers out, nothing executed


def _check_dtype(dtype, what: str = "numpy dtype"):
    """The dtype of a .bin array or scalar: plain numeric or bool only (no object, string, record or datetime)."""
    if not isinstance(dtype, np.dtype):
        raise BinRefused(f"refusing {what} built from {type(dtype).__name__} in a .bin (expected a numpy dtype)")
    if dtype.hasobject:
        raise BinRefused(f"refusing numpy object dtype {dtype!r} in a .bin (only numeric and bool arrays are allowed)")
    if dtype.kind not in _PLAIN_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise BinRefused(f"refusing numpy dtype {dtype!r} in a .bin (only numeric and bool arrays are allowed)")
    return dtype


def _safe_dtype(spec, *args):
    """numpy.dtype, but only plain numeric or bool: object arrays would unpickle arbitrary Python objects."""
    return _check_dtype(np.dtype(spec, *args))


class _CheckedArray(np.ndarray):
    """What `numpy.ndarray` resolves to in a .bin: an ndarray whose pickled state is checked before it is set
    (protocols 2-4 rebuild arrays as _reconstruct(ndarray, ...) then __setstate__((ver, shape, dtype, ...)))."""

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) < 4:
            raise BinRefused(f"refusing a numpy array state of type {type(state).__name__} in a .bin")
        _check_dtype(state[2] if len(state) == 5 else state[1], "numpy array")
        return super().__setstate__(state)


def _reconstruct_checked(subtype, shape, typecode):
    """numpy's _reconstruct, for the checked ndarray only (the array is empty until __setstate__ fills it)."""
    if subtype is not _CheckedArray:
        raise BinRefused(f"refusing to reconstruct {getattr(subtype, '__name__', subtype)!r} in a .bin")
    return np.ndarray.__new__(_CheckedArray, shape, _safe_dtype(typecode))


def _frombuffer_checked(buf, dtype, shape, order="C"):
    """numpy's protocol-5 array constructor: raw bytes of a plain numeric or bool dtype, reshaped."""
    _check_dtype(dtype, "numpy array")
    if isinstance(buf, pickle.PickleBuffer):
        buf = buf.raw()
    if not isinstance(buf, (bytes, bytearray, memoryview)):
        raise BinRefused(f"refusing a numpy array buffer of type {type(buf).__name__} in a .bin")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


def _scalar_checked(dtype, data=None):
    """numpy scalar (np.True_, np.float32(1.0), ...) from its raw bytes, for a plain numeric or bool dtype."""
    _check_dtype(dtype, "numpy scalar")
    if not isinstance(data, (bytes, bytearray)) or len(data) != dtype.itemsize:
        raise BinRefused(f"refusing a numpy {dtype} scalar without its {dtype.itemsize} raw bytes in a .bin")
    return np.frombuffer(bytes(data), dtype=dtype)[0]


def _latin1_encode(text, encoding="latin1"):
    """_codecs.encode as protocol-2 pickles use it to rebuild bytes; only the latin-1 round trip is allowed."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise BinRefused(f"refusing _codecs.encode with encoding {encoding!r} in a .bin")
    return text.encode("latin1")


_NUMPY_PATHS = ("numpy.core", "numpy._core")  # numpy 1.x and 2.x module names of the same functions
_ALLOWED = {
    **{(f"{pkg}.multiarray", "_reconstruct"): (lambda: _reconstruct_checked) for pkg in _NUMPY_PATHS},
    **{(f"{pkg}.multiarray", "scalar"): (lambda: _scalar_checked) for pkg in _NUMPY_PATHS},
    **{(f"{pkg}.numeric", "_frombuffer"): (lambda: _frombuffer_checked) for pkg in _NUMPY_PATHS},  # protocol 5
    ("numpy", "ndarray"): lambda: _CheckedArray,
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
                f"refusing to load global {module}.{name} from {self._source!r}: a verification .bin holds only "
                "bytes, numbers, bools, and numpy arrays or scalars of numeric or bool dtype, which never need it. "
                "The file is not a plain InsightFace .bin; do not load it with pickle")
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
