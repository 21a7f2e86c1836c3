"""Console scripts (declared in pyproject.toml): `mobiface-train`, `mobiface-verify`, `mobiface-identify`, ...

Each one is the same program as its `python -m mobiface_tf.X` or `python tools/X.py` form, with the same flags:
the quiet start-up (mobiface_tf.quiet) is installed first, then the module is imported and run. The tools/
scripts are not part of the package, so their commands work from an editable install (`make venv` does
`pip install -e .`) and say so otherwise.
"""
from __future__ import annotations

import importlib
import runpy
import sys
from pathlib import Path

from mobiface_tf import quiet

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _module(name: str) -> None:
    quiet.install(sys.argv)
    from absl import app

    mod = importlib.import_module(name)
    mod.define_flags()
    quiet.define_verbose_flag()
    app.run(mod.main)


def _tool(script: str) -> None:
    quiet.install(sys.argv)
    path = TOOLS / script
    if not path.is_file():
        sys.exit(f"error: {path} not found; the tools/ commands need the repository checkout installed with "
                 f"`pip install -e .` (make venv does that)")
    sys.path.insert(0, str(TOOLS))
    runpy.run_path(str(path), run_name="__main__")


def train() -> None:
    """mobiface-train: python -m mobiface_tf.train."""
    _module("mobiface_tf.train")


def verify() -> None:
    """mobiface-verify: python -m mobiface_tf.verify."""
    _module("mobiface_tf.verify")


def identify() -> None:
    """mobiface-identify: python -m mobiface_tf.identify."""
    _module("mobiface_tf.identify")


def demo() -> None:
    """mobiface-demo: python -m mobiface_tf.demo (makes the README's demo photos and gallery)."""
    _module("mobiface_tf.demo")


def prepare() -> None:
    """mobiface-prepare: python tools/prepare_data.py."""
    _tool("prepare_data.py")


def evaluate() -> None:
    """mobiface-evaluate: python tools/evaluate.py."""
    _tool("evaluate.py")


def to_tflite() -> None:
    """mobiface-to-tflite: python tools/to_tflite.py."""
    _tool("to_tflite.py")


def bench() -> None:
    """mobiface-bench: python tools/bench.py."""
    _tool("bench.py")
