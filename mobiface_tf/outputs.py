"""Output paths, checked before any work: a tool that writes files says what is wrong with where they go before it
loads a model, reads a face or converts anything, instead of failing with a traceback after the whole run.

    check_output_file("results", "--output")   # ValueError: --output 'results' is a directory; pass a file name ...
    check_output_dir("model.tflite", "--output_dir")  # ValueError: ... is a file; pass a folder ...

What is checked, for a file: it is not an existing folder; an existing file can be opened for writing; its folder
exists, is a folder and a file can really be created in it. For a folder: it is not an existing file; when it
exists a file can be created in it; when it does not, its parent folder exists and a file can be created there.
"Can be created" is tried (a temporary file, removed at once), not read from permission bits: root may write where
the bits say no, and a read-only mount or /sys says no to root too.

A missing parent folder is an error (the message says `mkdir -p` it) unless the caller passes make_parent=True,
which tools use for their own default folders (eval_out/, bench_out/); the parent is then created here.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["check_output_file", "check_output_dir"]


def _writable_folder(folder: Path) -> str | None:
    """None when a file can be created in the existing folder `folder`, else the reason (OS error text)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".mobiface-write-check-", dir=folder)
    except OSError as e:
        return e.strerror or str(e)
    os.close(fd)
    os.unlink(name)
    return None


def _check_parent(path: Path, flag: str, kind: str, make_parent: bool) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        if not make_parent:
            raise ValueError(f"{flag} '{path}': the folder '{parent}' does not exist; create it first "
                             f"(mkdir -p '{parent}') or pass another {kind}")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"{flag} '{path}': cannot create the folder '{parent}' ({e.strerror or e}); pass "
                             f"another {kind}") from None
    if not parent.is_dir():
        raise ValueError(f"{flag} '{path}': '{parent}' is not a folder; pass another {kind}")
    reason = _writable_folder(parent)
    if reason:
        raise ValueError(f"{flag} '{path}': cannot write in '{parent}' ({reason}); pass a {kind} in a folder you "
                         "can write")


def check_output_file(path, flag: str, make_parent: bool = False, example: str = "out.json") -> Path:
    """Check that the file `path` can be written (see the module docstring); returns it as a Path.

    Args:
      path: the file the tool will write (str or Path). flag: the flag that named it, for the message.
      make_parent: create a missing parent folder (a tool's own default) instead of refusing it.
      example: a file name suggested when `path` is an existing folder (e.g. "eval.json").
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
    _check_parent(path, flag, "file", make_parent)
    return path


def check_output_dir(path, flag: str, make_parent: bool = False) -> Path:
    """Check that the folder `path` can be written or created (see the module docstring); returns it as a Path.

    The folder itself is not created here (the tool does so when it starts writing); with make_parent=True a
    missing parent is. Raises ValueError with one line saying what is wrong.
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
    _check_parent(path, flag, "folder", make_parent)
    return path
