"""InsightFace verification `.bin` files, read with a restricted unpickler.

An InsightFace `.bin` is a pickle of `(list of JPEG byte strings, list of issame bools)`. A pickle can
run arbitrary code when loaded, so it is read with an unpickler that resolves only the handful of
globals those files really use (numpy array reconstruction, a few builtins) and refuses the rest.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from mobiface_tf.atomic import atomic_path


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


def check_image_sizes(path, images, size: tuple[int, int] | None = None, basis: str = "the model's input",
                      realign: bool = True) -> None:
    """Every encoded image of the .bin `path` is `size` (width, height) (None: image 0's size), read from the headers.

    Nothing is decoded, so a whole LFW .bin is checked in well under a second, before any embedding starts.
    ValueError, one line naming the .bin, the first image of another size (its index, counted from 0, and its
    pair), that size, the expected one (`basis` says where it comes from) and the ways out: a .bin rebuilt with
    crops of that size, or (`realign`: for commands that have the flag) --realign, which aligns every image.
    """
    from mobiface_tf.images import image_header

    if not images:
        return
    if size is None:
        size, basis = tuple(image_header(images[0], f"{str(path)!r}: image 0")[:2]), "the size of image 0"
    want_w, want_h = size
    for i, data in enumerate(images):
        w, h = image_header(data, f"{str(path)!r}: image {i}")[:2]
        if (w, h) != (want_w, want_h):
            ways = "pass --realign to align every image to the ArcFace template, or " if realign else ""
            raise ValueError(f"{str(path)!r}: image {i} (counting from 0; the {('first', 'second')[i % 2]} image of "
                             f"pair {i // 2}) is {w}x{h}, expected {want_w}x{want_h} ({basis}); {ways}rebuild the "
                             f".bin with {want_w}x{want_h} crops (mobiface-make-bin)")


def write_bin(path, images, issame) -> Path:
    """Write an InsightFace verification .bin: a pickle (protocol 4) of (list of encoded-image bytes, list of bools).

    Pair k is (images[2k], images[2k+1]) with issame[k]. Only bytes and bools go in, so `read_bin` (and InsightFace's
    own loader) can read it without executing anything. Written to a temporary file in the same folder (missing
    folders created), read back with `read_bin`, and only then renamed over `path` (mobiface_tf.atomic): a killed
    run or a full disk leaves the old file and no half-written .bin. Raises ValueError unless there are exactly two
    images per pair, OSError when it cannot be written.
    """
    images = [bytes(x) for x in images]
    issame = [bool(x) for x in issame]
    if len(images) != 2 * len(issame) or not issame:
        raise ValueError(f"{len(images)} images for {len(issame)} pairs; a .bin needs exactly two images per pair")
    path = Path(path)

    def reads_back(tmp: Path) -> None:  # the .bin on disk is what read_bin (and InsightFace) will load
        try:
            got, same = read_bin(tmp)
        except ValueError as e:
            raise OSError(f"the .bin written for {str(path)!r} does not read back ({e}); check free space and "
                          "rerun") from None
        if len(got) != len(images) or same.tolist() != issame:
            raise OSError(f"the .bin written for {str(path)!r} does not read back whole; check free space and rerun")

    with atomic_path(path, check=reads_back) as tmp, tmp.open("wb") as f:
        pickle.dump((images, issame), f, protocol=4)
    return path
