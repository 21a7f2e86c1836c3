"""Quiet start-up: no CUDA / XLA / cpu-feature log lines on stderr from the CLIs, unless --verbose.

Two things are needed, because TensorFlow logs through two paths:
  * TF_CPP_MIN_LOG_LEVEL=3, set before TensorFlow is imported, silences its runtime C++ log (e.g. "failed
    call to cuInit"). It is inherited by every child process (prepare_data's workers, bench's children).
  * A few lines are written by static initialisers of TF's shared libraries *before* that level is read
    ("WARNING: All log messages before absl::InitializeLog() ...", "oneDNN custom operations are on",
    "Could not find cuda drivers") and LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate".
    For those, `install()` routes file descriptor 2 through a filter thread that drops exactly such lines
    (`is_noise`) and passes everything else through unchanged. Children inherit the filtered descriptor.

Call `install(sys.argv)` at the top of an entry point, before anything imports TensorFlow. `--verbose` on
the command line (or MOBIFACE_VERBOSE=1 in the environment) leaves both untouched, so the full log shows.
"""
from __future__ import annotations

import atexit
import os
import re
import select
import sys
import threading
import time

VERBOSE_ENV = "MOBIFACE_VERBOSE"

# Lines that carry no information for a user of the CLIs. C++ absl-format lines look like
# "I0000 00:00:1795958536.678025   12675 port.cc:153] message"; Python's absl logging uses the same format
# with a .py file, and those lines (our own warnings) are kept.
_ABSL_LINE = re.compile(r"^([IWE])\d{4} [\d:.]+\s+\d+ [\w+-]+\.(?:cc|cpp|c|h):\d+\] (.*)$")
_GPU_WORDS = re.compile(r"cuda|cuInit|cuDNN|cuFFT|cuBLAS|TensorRT|GPU|XLA|oneDNN|rebuild TensorFlow", re.I)
_PLAIN_NOISE = (
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"),
    re.compile(r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$"),
    re.compile(r"^INFO: Initialized TensorFlow Lite runtime\.$"),
    # printed by the converter's MLIR quantiser for every int8 export
    re.compile(r"^fully_quantize: \d+, inference_type: \d+, input_inference_type: \w+, output_inference_type: \w+$"),
    re.compile(r"^To enable the following instructions: .* rebuild TensorFlow with the appropriate compiler flags\.$"),
)


def is_verbose(argv=None) -> bool:
    """True when --verbose (or --verbose=true/1) is on the command line or MOBIFACE_VERBOSE=1 is set."""
    if os.environ.get(VERBOSE_ENV, "") not in ("", "0", "false"):
        return True
    verbose = False
    for a in argv if argv is not None else sys.argv:
        if a in ("--verbose", "--verbose=true", "--verbose=True", "--verbose=1"):
            verbose = True
        elif a in ("--noverbose", "--verbose=false", "--verbose=False", "--verbose=0"):
            verbose = False
    return verbose


def is_noise(line: str) -> bool:
    """Whether one stderr line (without its newline) is start-up noise that the quiet mode drops.

    Info and warning lines of TF's C++ log go; error lines only when they are about CUDA / GPUs (a CPU-only
    machine always "fails" cuInit). Everything else, Python tracebacks and our own messages included, stays.
    """
    line = line.rstrip("\r")
    m = _ABSL_LINE.match(line)
    if m:
        return m.group(1) in "IW" or bool(_GPU_WORDS.search(m.group(2)))
    return any(p.match(line) for p in _PLAIN_NOISE)


def define_verbose_flag() -> None:
    """Define the absl flag --verbose (once per process), so `install` and absl agree on the command line."""
    from absl import flags

    if "verbose" not in flags.FLAGS:
        flags.DEFINE_bool("verbose", False, "show TensorFlow's C++ start-up log (CUDA, XLA, oneDNN, CPU "
                          "features) on stderr; by default it is filtered out")


class _StderrFilter:
    """Routes fd 2 through a pipe; a daemon thread copies what is not noise to the original stderr."""

    def __init__(self):
        sys.stderr.flush()
        self.real = os.dup(2)
        self.read_fd, write_fd = os.pipe()
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self.thread = threading.Thread(target=self._pump, name="stderr-filter", daemon=True)
        self.thread.start()
        atexit.register(self.close)

    def _emit(self, text: str) -> None:
        data = text.encode("utf-8", "replace")
        while data:
            data = data[os.write(self.real, data):]

    def _pump(self) -> None:
        pending, since = "", 0.0
        while True:
            ready, _, _ = select.select([self.read_fd], [], [], 0.2)
            if ready:
                chunk = os.read(self.read_fd, 65536)
                if not chunk:
                    break
                if not pending:
                    since = time.monotonic()
                pending += chunk.decode("utf-8", "replace")
                # Complete lines ("\n"; "\r" too, so progress bars keep moving) are judged one by one.
                parts = re.split(r"(?<=[\n\r])", pending)
                pending = parts.pop() if parts and not parts[-1].endswith(("\n", "\r")) else ""
                self._emit("".join(p for p in parts if not is_noise(p.rstrip("\n"))))
            elif pending and time.monotonic() - since > 0.2:  # a line without an end: show it anyway
                if not is_noise(pending):
                    self._emit(pending)
                pending = ""
        if pending and not is_noise(pending):
            self._emit(pending)

    def close(self) -> None:
        """Restore the real stderr and let the thread drain what is still in the pipe."""
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(self.real, 2)  # our end of the pipe closes: the thread sees EOF once children are done too
        self.thread.join(timeout=2.0)


_installed: _StderrFilter | None = None


def install(argv=None) -> bool:
    """Make this process (and its children) quiet unless --verbose; returns True when quiet mode is on.

    Sets TF_CPP_MIN_LOG_LEVEL=3 unless the user set it, and filters start-up noise from fd 2. Idempotent.
    With --verbose it sets MOBIFACE_VERBOSE=1 instead, so child processes stay verbose too.
    """
    global _installed
    if is_verbose(argv):
        os.environ[VERBOSE_ENV] = "1"
        return False
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if _installed is None:
        try:
            _installed = _StderrFilter()
        except OSError:  # no usable fd 2 (a closed stderr): the log level alone will have to do
            return True
    return True
