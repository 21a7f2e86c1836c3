"""Writing a file: never in place. The one writer of every file the project produces (models, indexes, reports,
shards, sidecars, .bin, caches).

    with atomic_path("deploy/model.tflite", check=parity_ok) as tmp:   # tmp: a new empty file beside the target
        tmp.write_bytes(content)                                        # write it any way you like
    # here the target is the whole new file, or (on any exception, or a failed check) still the old one

    write_bytes_atomic(path, data) / write_text_atomic(path, text) / write_json_atomic(path, obj)

How: the new content goes to a temporary file in the target's own folder (so the rename is atomic on POSIX),
is flushed to disk (fsync), checked by the optional `check(tmp)`, and only then renamed over the target with
`os.replace`; the folder is fsynced after the rename. Readers see the old file or the whole new one, never a
mix. A full disk, a crash, Ctrl-C, an exception in the with-block or a failed check removes the temporary file
and leaves the target as it was. Two writers of one target never share a temporary name.

Details that callers rely on:
  - Missing parent folders of the target are created (as training does for --model_dir).
  - Temporary names are hidden and end in ".tmp": `.<name>.<8 hex>.tmp` (`keep_suffix=True` adds the
    target's suffix, `.<name>.<8 hex>.tmp.keras`, for writers that infer the format from it: Keras, OpenCV,
    matplotlib). A glob such as `*.tfrecord` or `*.json` never matches a half-written file. `leftover_temps`
    finds those a killed process left behind.
  - A replaced target keeps its permission bits; a new one gets the usual 0o666 minus the umask.
  - A symlink at the target is replaced by the new file; the file it pointed to is never written.
  - Only regular files: a target that is an existing folder fails (IsADirectoryError) with the folder untouched.

Whether a command may replace a file at all (is it the command's own index, sidecar or report?) is decided by
the caller before it writes (mobiface_tf.outputs, mobiface_tf.gallery, mobiface_tf.sidecar). This module
imports nothing of the project's and no TensorFlow.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Callable, Iterator

__all__ = ["CheckFailed", "atomic_path", "write_bytes_atomic", "write_text_atomic", "write_json_atomic",
           "temp_beside", "commit_temp", "leftover_temps", "is_temp_name"]

_TEMP_RE = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp(\.[^.]+)?$")


class CheckFailed(ValueError):
    """The new file failed the caller's check; the target was not touched (the message names it)."""


def is_temp_name(name: str) -> bool:
    """True for a name this module gives its temporary files (`.<name>.<8 hex>.tmp[.<suffix>]`)."""
    return bool(_TEMP_RE.match(name))


def leftover_temps(folder) -> list[Path]:
    """Temporary files of this module left in `folder` by a killed process (sorted; [] for a missing folder).

    Only a process that owns the folder (holds its lock, as prepare does) should delete them: another live
    writer's temporary file has the same form."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if is_temp_name(p.name) and p.is_file())


def temp_beside(target, keep_suffix: bool = False) -> Path:
    """Create a new, empty, unique temporary file beside `target` (missing parent folders created); returns its
    path. For writers that open and commit in separate calls (a shard writer); pair it with commit_temp, and
    unlink the file on abort. OSError when the folder cannot be created or written."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        name = f".{target.name}.{secrets.token_hex(4)}.tmp{target.suffix if keep_suffix else ''}"
        tmp = target.with_name(name)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name beside {str(target)!r} after 100 tries")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable; file systems that cannot fsync a folder are let be."""
    try:
        _fsync(folder)
    except OSError:
        pass


def commit_temp(tmp, target, check: Callable[[Path], object] | None = None) -> Path:
    """Flush `tmp` (from temp_beside) to disk, run check(tmp), and rename it over `target`; returns `target`.

    check: raises (its exception propagates) or returns False (CheckFailed) to refuse the file.
    On any failure `tmp` is removed and `target` left as it was; the error is raised.
    """
    tmp, target = Path(tmp), Path(target)
    try:
        _fsync(tmp)
        if check is not None and check(tmp) is False:
            raise CheckFailed(f"not writing {str(target)!r}: the new file failed its check; the old file is "
                              "unchanged")
        try:
            old = os.stat(target, follow_symlinks=False)
        except FileNotFoundError:
            old = None
        if old is not None and stat.S_ISREG(old.st_mode):
            os.chmod(tmp, stat.S_IMODE(old.st_mode))
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(target.parent)
    return target


@contextlib.contextmanager
def atomic_path(target, check: Callable[[Path], object] | None = None, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a new empty temporary file beside `target`; when the block ends, rename it over `target`.

    Args:
      target: the file to write (str or Path). Its missing parent folders are created.
      check: called as check(tmp) after the block, with the complete file flushed to disk; it raises (its
        exception propagates) or returns False (CheckFailed) to refuse the file. Anything else accepts it.
      keep_suffix: give the temporary file the target's suffix (for writers that infer the format from it).
    Raises:
      Whatever the block or `check` raises, CheckFailed, or OSError (a full disk, no permission, the target an
      existing folder). In every case the temporary file is removed and `target` is left as it was.
    """
    target = Path(target)
    tmp = temp_beside(target, keep_suffix)
    try:
        yield tmp
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    commit_temp(tmp, target, check)


def write_bytes_atomic(target, data: bytes, check: Callable[[Path], object] | None = None) -> Path:
    """Write `data` to `target` through atomic_path (same errors, same guarantees); returns `target` as a Path."""
    with atomic_path(target, check) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return Path(target)


def write_text_atomic(target, text: str, check: Callable[[Path], object] | None = None,
                      encoding: str = "utf-8") -> Path:
    """Write `text` to `target` (default UTF-8) through atomic_path; returns `target` as a Path."""
    return write_bytes_atomic(target, text.encode(encoding), check)


def write_json_atomic(target, obj, indent: int | None = 1, check: Callable[[Path], object] | None = None,
                      **dumps_kwargs) -> Path:
    """Write `obj` as JSON (json.dumps(obj, indent=indent, **dumps_kwargs) plus a final newline) to `target`
    through atomic_path; returns `target` as a Path. TypeError/ValueError for an object JSON cannot hold, raised
    before anything is created."""
    return write_text_atomic(target, json.dumps(obj, indent=indent, **dumps_kwargs) + "\n", check)
