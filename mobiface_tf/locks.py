"""One writer per folder (a training's model_dir, prepare's --output), and files that are never half-written.

`DirLock` holds an exclusive `fcntl.flock` on one lock file in a folder for the whole run; `ModelDirLock` (training)
and `OutputLock` (data preparation) differ only in the file name and in their one-line messages.
`ModelDirLock` holds an exclusive `fcntl.flock` on MODEL_DIR/.train.lock for the whole run; the file records the
holder's pid and host. The kernel drops the lock when its process dies (even by SIGKILL), so a lock file left by
a killed run is stale by construction: the next run takes it over and says whose it was. A second run while
the holder is alive stops at once with `ModelDirBusy`, naming the holder's pid. On a file system without
flock support the holder's pid is checked instead (alive: busy; gone: stale).

Under tf.distribute multi-worker only the chief takes the lock (the other workers write nothing there but
their scratch checkpoints). Final files are written through mobiface_tf.atomic (a unique temporary name in
their folder, renamed into place), so a crash or a concurrent writer never leaves a corrupt file under the
real name.
"""
from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

log = logging.getLogger(__name__)
LOCK_FILE = ".train.lock"
OUTPUT_LOCK_FILE = ".prepare.lock"


class ModelDirBusy(RuntimeError):
    """Another live training holds the model_dir's lock (the CLI exits 2 with this one line)."""


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _read_holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 4096).decode() or "{}")
    except (OSError, ValueError):
        return {}


class DirLock:
    """Exclusive lock on a folder for one process; a context manager (acquire / release).

    Subclasses name the lock file (`lock_file`), the error when a live run holds it (`_busy`) or when it cannot be
    taken (`_cannot_take`), and whether taking over a stale lock is logged (`warn_stale`)."""

    lock_file = ".lock"
    warn_stale = True

    def __init__(self, folder):
        self.path = Path(folder) / self.lock_file
        self.fd: int | None = None
        self.took_over: dict | None = None  # the stale holder's record, when one was taken over

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # the file may be unlinked by a releasing holder between open and flock: retry
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                held = self._lock(fd)
            except BaseException:
                os.close(fd)
                raise
            if held and self._same_file(fd):
                self.fd = fd
                self._record(fd)
                return
            os.close(fd)
        raise self._cannot_take()

    def _lock(self, fd: int) -> bool:
        """True once this process holds the lock; the subclass's `_busy` error when a live run does."""
        holder = _read_holder(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            for _ in range(20):  # a holder that just took the lock may not have written its pid yet
                holder = _read_holder(fd) or holder
                if "pid" in holder:
                    break
                time.sleep(0.05)
            raise self._busy(holder.get("pid", "?")) from None
        except OSError as e:  # no flock on this file system: fall back to the holder's pid
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            if holder.get("pid") not in (None, os.getpid()) and _pid_alive(int(holder["pid"])) and \
                    holder.get("host") == socket.gethostname():
                raise self._busy(holder["pid"]) from None
        if holder.get("pid") not in (None, os.getpid()):
            self.took_over = holder
        return True

    def _busy(self, pid) -> Exception:
        return RuntimeError(f"{self.path.parent} is locked by pid {pid} (lock {self.path})")

    def _cannot_take(self) -> Exception:
        return RuntimeError(f"cannot take the lock {self.path}; delete it if no run uses {self.path.parent}")

    def _same_file(self, fd: int) -> bool:
        try:
            return os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            return False

    def _record(self, fd: int) -> None:
        if self.took_over and self.warn_stale:
            log.warning("warning: took over the stale lock %s left by pid %s (started %s): that run was killed and "
                        "no longer holds it", self.path, self.took_over.get("pid"), self.took_over.get("started", "?"))
        record = dict(pid=os.getpid(), host=socket.gethostname(), started=time.strftime("%Y-%m-%d %H:%M:%S"))
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, (json.dumps(record) + "\n").encode())
        os.fsync(fd)

    def release(self) -> None:
        """Remove the lock file and drop the lock (unlink first, so a waiting run never locks a dead file)."""
        if self.fd is None:
            return
        try:
            if self._same_file(self.fd):
                self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)
            self.fd = None


class ModelDirLock(DirLock):
    """Exclusive lock on `model_dir` for one training process (MODEL_DIR/.train.lock).

    acquire() raises ModelDirBusy ("model_dir X is being trained by pid N ...") when a live run holds it, and
    logs a warning when it takes over a stale lock left by a killed run (pid N, no longer running)."""

    lock_file = LOCK_FILE

    def _busy(self, pid) -> ModelDirBusy:
        return ModelDirBusy(f"model_dir {str(self.path.parent)!r} is being trained by pid {pid} (lock "
                            f"{self.path}); wait for it to finish, or use another --model_dir")

    def _cannot_take(self) -> ModelDirBusy:
        return ModelDirBusy(f"cannot take the lock {self.path}; if no training uses {str(self.path.parent)!r}, "
                            "delete that file")


class OutputLock(DirLock):
    """Exclusive lock on prepare_data's `--output` folder (OUTPUT/.prepare.lock).

    acquire() raises ValueError ("--output X is being written by another prepare_data run (pid N ...") when a
    live run holds it; a stale lock left by a killed run is taken over silently."""

    lock_file = OUTPUT_LOCK_FILE
    warn_stale = False

    def _busy(self, pid) -> ValueError:
        return ValueError(f"--output '{self.path.parent}' is being written by another prepare_data run (pid {pid}; "
                          f"lock file {self.path}); wait for it to finish, or delete the lock file if no run is "
                          "active")

    def _cannot_take(self) -> ValueError:
        return ValueError(f"cannot take the lock file {self.path}; delete it if no prepare_data run is active")
