"""The README cannot drift: its Quick start runs as printed, prints what it shows, and leaves stderr quiet.

Also: the console scripts are declared, and .gitignore covers every tool's default output path.
"""
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from mobiface_tf import quiet

from conftest import REPO  # noqa: E402  (the repo root, one definition for every test file)
README = REPO / "README.md"


def _section(title_prefix: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title_prefix}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def _blocks(section: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", section, flags=re.S)


def quick_script() -> tuple[str, list[str]]:
    """(bash script of the Set up + Quick start command blocks, output lines the Quick start shows).

    `make ...` lines are left out: `make test` (which runs this) has just done the set-up they do.
    """
    commands = [line for block in _blocks(_section("Set up"), "bash") + _blocks(_section("Quick start"), "bash")
                for line in block.splitlines() if line.strip() and not line.startswith("make ")]
    shown = [line for block in _blocks(_section("Quick start"), "text") for line in block.splitlines() if line]
    return "set -euo pipefail\n" + "\n".join(commands) + "\n", shown


def test_quick_start_blocks_are_found():
    script, shown = quick_script()
    assert "source .venv/bin/activate" in script
    assert "python -m mobiface_tf.verify" in script and "mobiface-identify" in script and "--far=" in script
    assert any(line.startswith("verdict:") for line in shown) and any("unknown" in line for line in shown)
    # CI runs from another checkout path: output shown in the README must not hold a machine's absolute path.
    absolute = [line for line in shown if re.search(r"(^|[\s=:(\"'])/[\w.]", line)]
    assert not absolute, absolute


@pytest.mark.slow
def test_quick_start_runs_as_printed(shared_data):
    """Every command of the Quick start through bash from the repo root: exit 0, every output line the README
    shows is printed, and stderr has no TensorFlow start-up noise (it is empty)."""
    script, shown = quick_script()
    proc = subprocess.run(["bash", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = set(proc.stdout.splitlines())
    missing = [line for line in shown if line not in printed]
    assert not missing, f"README shows lines the commands did not print: {missing[:5]}\n--- printed:\n{proc.stdout}"
    assert proc.stderr.strip() == "", proc.stderr[-3000:]


def test_console_scripts_declared_and_importable():
    import importlib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    for name in ("mobiface-train", "mobiface-verify", "mobiface-identify", "mobiface-prepare", "mobiface-evaluate",
                 "mobiface-to-tflite", "mobiface-bench", "mobiface-demo"):
        module, func = scripts[name].split(":")
        assert callable(getattr(importlib.import_module(module), func)), name
    for script in ("prepare_data.py", "evaluate.py", "to_tflite.py", "bench.py"):
        assert (REPO / "tools" / script).is_file()


@pytest.mark.parametrize("path", ["eval_out/eval_m.tflite.json", "eval_out/eval_m.tflite.roc.png",
                                  "quickstart_out/x", "bench_out/results.json", "runs/a/embedding.keras",
                                  "demo/colin_big_1600x1200.jpg", "demo/gallery/.mobiface_index.npz",
                                  "somewhere/m.tflite", "somewhere/m.keras.eval.json", "m.tflite.parity.json"])
def test_gitignore_covers_default_outputs(path):
    """Each tool's default output path (evaluate: eval_out/, bench: bench_out/, quickstart, demo, sidecars,
    identify's index, exports and their parity reports) is ignored, so running them leaves no untracked file."""
    r = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=REPO)
    assert r.returncode == 0, f"{path} is not covered by .gitignore"


QUIET_PROBE = ("import sys\nfrom mobiface_tf import quiet\nquiet.install(sys.argv)\nimport tensorflow as tf\n"
               "tf.constant(1.0) + 1\nprint('ours', file=sys.stderr)\n")


def test_quiet_filters_tensorflow_start_up_noise_but_not_ours():
    """A real TF import in a child: quiet mode leaves only our own stderr line; --verbose shows TF's log again."""
    quiet_run = subprocess.run(["python", "-c", QUIET_PROBE], capture_output=True, text=True, timeout=300,
                               cwd=REPO, env=_env())
    assert quiet_run.returncode == 0, quiet_run.stderr
    assert quiet_run.stderr.splitlines() == ["ours"], quiet_run.stderr
    loud = subprocess.run(["python", "-c", QUIET_PROBE, "--verbose"], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env=_env())
    assert loud.returncode == 0 and "ours" in loud.stderr
    assert len(loud.stderr.splitlines()) > 1, "with --verbose TensorFlow's start-up lines should show"


def _env():
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", quiet.VERBOSE_ENV)}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


@pytest.mark.parametrize("line,noise", [
    ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR", True),
    ("I0000 00:00:1795958536.678025   12675 port.cc:153] oneDNN custom operations are on.", True),
    ("I0000 00:00:1795958536.678985   12675 cudart_stub.cc:31] Could not find cuda drivers on your machine", True),
    ("E0000 00:00:1795958537.559373   12675 cuda_platform.cc:52] failed call to cuInit: INTERNAL", True),
    ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.", True),
    ("fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32, output_inference_type: FLOAT32", True),
    ("E0000 00:00:1795958537.559373   12675 op_kernel.cc:52] a real kernel error", False),
    ("W1129 13:24:16.396255 140526709775232 sidecar.py:107] ignoring threshold sidecar x", False),  # ours (Python)
    ("error: model not found: 'nope.tflite'", False),
    ("Traceback (most recent call last):", False),
])
def test_is_noise(line, noise):
    assert quiet.is_noise(line) is noise
