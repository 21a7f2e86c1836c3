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


# A number as printed: optional sign, digits, optional fraction, optional exponent ("0.4615", "-0.023", "1e-3").
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")
# Printed decimals are rounded results of float maths, which differ in their last digits between CPUs (AVX2 vs
# AVX-512 kernels sum in another order): 0.1231 on one machine is 0.123 on another, a tail threshold 0.4618 is
# 0.4615. Decimals agree within this; integers (counts, sizes, ids) must agree exactly.
DECIMAL_ATOL = 0.01


def line_matches(shown: str, printed: str, atol: float = DECIMAL_ATOL) -> bool:
    """True when `printed` is the line `shown`, text for text, with each decimal number within `atol` of the
    shown one and each integer equal (a 4-decimal figure is never compared as text)."""
    if NUMBER.sub("#", shown) != NUMBER.sub("#", printed):
        return False
    for a, b in zip(NUMBER.findall(shown), NUMBER.findall(printed)):
        decimal = any(c in a + b for c in ".eE")
        if decimal and abs(float(a) - float(b)) > atol:
            return False
        if not decimal and int(a) != int(b):
            return False
    return True


def unmatched_in_order(shown: list[str], printed: list[str]) -> list[str]:
    """The shown lines that are not found in `printed` in the order shown (each after the previous match).
    The README may leave printed lines out, but never reorders them or moves them under another command."""
    missing, at = [], 0
    for line in shown:
        hit = next((i for i in range(at, len(printed)) if line_matches(line, printed[i])), None)
        if hit is None:
            missing.append(line)
        else:
            at = hit + 1
    return missing


def quick_steps() -> tuple[str, list[tuple[str, list[str]]]]:
    """(set-up prefix script, [(commands of one Quick start bash block, the output lines shown right under it)]).

    `make ...` lines are left out: `make test` (which runs this) has just done the set-up they do. A bash block
    with no text block before the next bash block shows no output (its list is empty).
    """
    setup = [line for block in _blocks(_section("Set up"), "bash") for line in block.splitlines()
             if line.strip() and not line.startswith("make ")]
    steps: list[tuple[str, list[str]]] = []
    for lang, body in re.findall(r"```(bash|text)\n(.*?)```", _section("Quick start"), flags=re.S):
        if lang == "bash":
            steps.append((body, []))
        elif steps and not steps[-1][1]:
            steps[-1] = (steps[-1][0], [line for line in body.splitlines() if line])
        else:
            raise AssertionError(f"a text block in the Quick start follows no command block: {body[:80]!r}")
    return "set -euo pipefail\n" + "\n".join(setup) + "\n", steps


def test_quick_start_blocks_are_found():
    setup, steps = quick_steps()
    assert "source .venv/bin/activate" in setup
    script = "".join(cmds for cmds, _ in steps)
    shown = [line for _, lines in steps for line in lines]
    assert "python -m mobiface_tf.verify" in script and "mobiface-identify" in script and "--far=" in script
    assert any(line.startswith("verdict:") for line in shown) and any("unknown" in line for line in shown)
    # CI runs from another checkout path: output shown in the README must not hold a machine's absolute path.
    absolute = [line for line in shown if re.search(r"(^|[\s=:(\"'])/[\w.]", line)]
    assert not absolute, absolute


def test_printed_lines_match_within_a_tolerance_in_order():
    """The comparison the Quick start test uses: decimals within DECIMAL_ATOL, integers and text exact, order
    kept. Run on the numbers two CPUs really printed (AMD EPYC AVX2 against Intel Xeon AVX-512)."""
    assert line_matches('{"similarity": 0.123, "same": false}', '{"similarity": 0.1231, "same": false}')
    assert line_matches("  2. Ben_Curtis  0.1688", "  2. Ben_Curtis  0.1689")
    assert line_matches("(shape -0.023, scale 0.0371) gives 0.4615", "(shape -0.022, scale 0.0372) gives 0.4618")
    assert not line_matches("similarity 0.7800", "similarity 0.8100")           # a real change of answer
    assert not line_matches("0 of 180 above it", "1 of 180 above it")           # counts are exact
    assert not line_matches("verdict: same person", "verdict: different")       # text is exact
    assert not line_matches("1. Colin_Powell  0.8083", "1. Tony_Blair  0.8083")
    assert unmatched_in_order(["a 1", "b 0.50"], ["x", "a 1", "y", "b 0.5012"]) == []
    assert unmatched_in_order(["b 0.50", "a 1"], ["a 1", "b 0.50"]) == ["a 1"]  # out of order


@pytest.mark.slow
def test_quick_start_runs_as_printed(shared_data):
    """Each command block of the Quick start through bash from the repo root, in order: exit 0, the lines the
    README shows under that block are printed by that block, in that order (decimals within a tolerance), and
    stderr has no TensorFlow start-up noise (it is empty)."""
    setup, steps = quick_steps()
    for commands, shown in steps:
        proc = subprocess.run(["bash", "-c", setup + commands], cwd=REPO, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, (commands, proc.stderr[-3000:])
        missing = unmatched_in_order(shown, proc.stdout.splitlines())
        assert not missing, (f"under {commands.splitlines()[0]!r} the README shows lines this block did not print "
                             f"in that order: {missing[:5]}\n--- printed:\n{proc.stdout}")
        assert proc.stderr.strip() == "", (commands, proc.stderr[-3000:])


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
                                  "somewhere/m.tflite", "somewhere/m.keras.eval.json", "m.tflite.parity.json",
                                  "m.tflite.failed", "m.tflite.failed.parity.json", "somewhere/.r.json.0a1b2c3d.tmp",
                                  "somewhere/.m.keras.0a1b2c3d.tmp.keras"])
def test_gitignore_covers_default_outputs(path):
    """Each tool's default output path (evaluate: eval_out/, bench: bench_out/, quickstart, demo, sidecars,
    identify's index, exports and their parity reports, a failed export, a killed writer's temporary file) is
    ignored, so running them leaves no untracked file."""
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
