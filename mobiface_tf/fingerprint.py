"""The model's content fingerprint: one sha256 over every file a model reads. The one owner of model hashing.

    model_fingerprint("m.tflite")      # sha256 of the file's bytes (what `sha256sum m.tflite` prints)
    model_fingerprint("saved_model/")  # every file under the folder, by relative path
    model_fingerprint("face.onnx")     # the .onnx, plus every external-data file its initializers point at
    file_sha256("photo.jpg")           # one file's bytes: a gallery photo's key in identify's index

Whatever is computed from a model's outputs keys on it: identify's gallery index, the evaluation sidecar's
threshold (mobiface_tf.sidecar), the data manifest's teacher (mobiface_tf.data.prepare), bench_identify's and
compare's caches. A path, size or mtime is not enough: copies keep mtimes, and a retrained model written to
the same path has other embeddings. An ONNX model saved with external data keeps its weights in other files
(`face.onnx.data`); retraining changes only those, so they are part of its content.

Layout of the hashed stream (stable; changing it makes every cached index, sidecar and manifest stale):
  - a single file: its bytes, so the fingerprint equals the file's plain sha256;
  - a directory: for each file in sorted relative-path order, the posix relative path, a NUL, then its bytes;
  - an .onnx with external data: the .onnx bytes, then for each external file (sorted by location) a NUL, the
    location, a NUL, then its bytes (the marker "<missing>" for a file that is not there: loading fails later,
    with the runtime's own message).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

_BLOCK = 1 << 20
MISSING = b"<missing>"


def _update(h, path: Path) -> None:
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_BLOCK), b""):
            h.update(block)


def file_sha256(path) -> str:
    """Hex sha256 of one file's bytes (read in 1 MiB blocks): a photo's key in identify's index."""
    h = hashlib.sha256()
    _update(h, Path(path))
    return h.hexdigest()


def onnx_external_files(path) -> list[str]:
    """The external-data locations (relative to the model's folder) of an .onnx file, sorted and unique.

    Read with onnx.load(load_external_data=False), so no weight is loaded; tensors in sub-graphs count too.
    Returns [] when onnx is not installed or the file cannot be parsed (loading it will say why).
    """
    try:
        import onnx
        from onnx.external_data_helper import _get_all_tensors, uses_external_data
    except ImportError:
        return []
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - not a valid ONNX file: the embedder's loader reports it
        return []
    locations = set()
    for tensor in _get_all_tensors(model):
        if uses_external_data(tensor):
            for entry in tensor.external_data:
                if entry.key == "location":
                    locations.add(entry.value)
    return sorted(locations)


def model_files(path) -> list[Path]:
    """Every file the model at `path` reads: the file, a directory's files, or an .onnx and its external data."""
    path = Path(path)
    if path.is_dir():
        return sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.relative_to(path).as_posix())
    files = [path]
    if path.suffix.lower() == ".onnx":
        files += [path.parent / loc for loc in onnx_external_files(path)]
    return files


def model_fingerprint(path) -> str:
    """Hex sha256 of a model's whole content (see the module docstring for what is hashed and in what order).

    path: a model file (.tflite, .keras, .onnx with or without external data) or a SavedModel directory.
    Raises OSError when `path` (or a file of a directory) cannot be read.
    """
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():
        for f in model_files(path):
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
            _update(h, f)
        return h.hexdigest()
    _update(h, path)
    if path.suffix.lower() == ".onnx":
        for location in onnx_external_files(path):
            h.update(b"\0" + location.encode() + b"\0")
            external = path.parent / location
            if external.is_file():
                _update(h, external)
            else:
                h.update(MISSING)
    return h.hexdigest()
