"""Output paths, checked before any work: a tool that writes files says what is wrong with where they go before it
loads a model, reads a face or converts anything, instead of failing with a traceback after the whole run.

    check_output_file("results", "--output")   # ValueError: --output 'results' is a folder; pass a file name ...
    check_output_dir("model.tflite", "--output_dir")  # ValueError: ... is an existing file; pass a folder ...
    check_output_file("notes.json", "--output", ours=json_report("num_pairs"), what="an evaluate report")
    # ValueError: --output 'notes.json' exists and is not an evaluate report; pass another path, or delete it

What is checked, for a file: it is not an existing folder; an existing file can be opened for writing and, when
`ours` is given, is recognisably the command's own (a report, a model, a chart: a command never replaces a file it
did not write); the nearest existing folder above it is a folder and a file can really be created in it. For a
folder: it is not an existing file; when it exists a file can be created in it; when it does not, the nearest
existing folder above it is writable. "Can be created" is tried (a temporary file, removed at once), not read from
permission bits: root may write where the bits say no, and a read-only mount or /sys says no to root too.

Missing parent folders are not an error: they are created when the file is written (mobiface_tf.atomic), as
training creates --model_dir. The checks themselves create nothing and leave nothing behind.

The recognisers (`json_report`, `is_png_file`, `markdown_starting`, `is_tflite_file`, `is_keras_file`) read only
the file's first bytes or its JSON keys. This module imports nothing of the project's.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Callable

__all__ = ["check_output_file", "check_output_dir", "json_report", "is_png_file", "markdown_starting",
           "is_tflite_file", "is_keras_file"]


def _writable_folder(folder: Path) -> str | None:
    """None when a file can be created in the existing folder `folder`, else the reason (OS error text)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".mobiface-write-check-", dir=folder)
    except OSError as e:
        return e.strerror or str(e)
    os.close(fd)
    os.unlink(name)
    return None


def _check_parent(path: Path, flag: str, kind: str) -> None:
    """The nearest existing folder above `path` must be a folder a file can be created in (missing ones below it
    are created by the writer)."""
    parent = path.parent if str(path.parent) else Path(".")
    while not parent.exists() and not parent.is_symlink() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"{flag} '{path}': '{parent}' is not a folder; pass another {kind}")
    reason = _writable_folder(parent)
    if reason:
        raise ValueError(f"{flag} '{path}': cannot write in '{parent}' ({reason}); pass a {kind} in a folder you "
                         "can write")


def check_output_file(path, flag: str, example: str = "out.json", ours: Callable[[Path], bool] | None = None,
                      what: str = "") -> Path:
    """Check that the file `path` can be written (see the module docstring); returns it as a Path.

    Args:
      path: the file the tool will write (str or Path). flag: the flag that named it, for the message.
      example: a file name suggested when `path` is an existing folder (e.g. "eval.json").
      ours: when given, an existing file is replaced only if ours(path) is True (the command's own report, model
        or chart); `what` names that kind of file in the message ("an evaluate report").
    Raises:
      ValueError: one line saying what is wrong and what to pass instead. Nothing is written or left behind.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} '{path}' is a folder; pass a file name such as {path / example}")
    if path.exists():
        try:  # append mode neither truncates nor touches the file
            with open(path, "ab"):
                pass
        except OSError as e:
            raise ValueError(f"{flag} '{path}' exists and cannot be written ({e.strerror or e}); pass another "
                             "file") from None
        if ours is not None and not ours(path):
            raise ValueError(f"{flag} '{path}' exists and is not {what or 'a file this command wrote'}; it is left "
                             "as it is: pass another path, or delete it")
    _check_parent(path, flag, "file")
    return path


def check_output_dir(path, flag: str) -> Path:
    """Check that the folder `path` can be written or created (see the module docstring); returns it as a Path.

    Nothing is created here (the tool makes the folder and its missing parents when it starts writing).
    Raises ValueError with one line saying what is wrong.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} '{path}' is an existing file; pass a folder (created when missing)")
    if path.is_dir():
        reason = _writable_folder(path)
        if reason:
            raise ValueError(f"{flag} '{path}': cannot write in this folder ({reason}); pass a folder you can "
                             "write")
        return path
    _check_parent(path, flag, "folder")
    return path


# ------------------------------------------------------------------ is an existing file the command's own?
def _head(path: Path, n: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def json_report(*keys: str) -> Callable[[Path], bool]:
    """A recogniser: True for a file holding a JSON object that has every one of `keys` (a report of ours)."""
    def ours(path: Path) -> bool:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(data, dict) and all(k in data for k in keys)
    return ours


def markdown_starting(*prefixes: str) -> Callable[[Path], bool]:
    """A recogniser: True for a text file that starts with one of `prefixes` (a Markdown table of ours)."""
    def ours(path: Path) -> bool:
        head = _head(Path(path), max(map(len, prefixes)) * 4).decode("utf-8", "replace")
        return any(head.startswith(p) for p in prefixes)
    return ours


def is_png_file(path) -> bool:
    """True for a PNG image (its 8-byte signature): the charts the commands draw."""
    return _head(Path(path), 8) == b"\x89PNG\r\n\x1a\n"


def is_tflite_file(path) -> bool:
    """True for a TFLite flatbuffer (file identifier "TFL3" at bytes 4..8): a model a command may re-export."""
    return _head(Path(path), 8)[4:8] == b"TFL3"


def is_keras_file(path) -> bool:
    """True for a whole Keras 3 model file: a zip archive holding Keras' config.json."""
    try:
        with zipfile.ZipFile(path) as z:
            return "config.json" in z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
