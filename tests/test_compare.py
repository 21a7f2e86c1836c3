"""tools/compare.py end to end on synthetic faces (no ../shared): every row of results.json, and a rerun that
skips what is done."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO  # noqa: E402  (the repo root, one definition for every test file)
FIELDS = ("model", "form", "params", "macs", "size_bytes", "latency_ms_p50", "heldout_accuracy", "heldout_folds",
          "train_seconds")


def run(out, *extra):
    cmd = [sys.executable, "tools/compare.py", f"--output_dir={out}", "--synthetic", "--steps=2",
           "--latency_rounds=3", "--num_calibration=16", *extra]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=dict(os.environ))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r.stdout


@pytest.mark.slow
def test_compare_synthetic_end_to_end_and_resume(tmp_path):
    out = tmp_path / "cmp"
    first = run(out)
    res = json.loads((out / "results.json").read_text())
    rows = res["rows"]
    students = ("mobiface_gdc", "mobilefacenet", "mobilenet_v1_gdc")
    assert [(r["model"], r["form"]) for r in rows if not r["model"].startswith("teacher")] == \
        [(m, f) for m in students for f in ("keras", "none", "float16", "int8", "int8_minmax")]
    assert any(r["model"].startswith("teacher:") for r in rows)
    for r in rows:
        assert set(FIELDS) <= set(r), (r["model"], r["form"], set(FIELDS) - set(r))
        assert 0.0 <= r["heldout_accuracy"] <= 1.0 and r["heldout_folds"] == [1, 2, 3]
        assert r["size_bytes"] > 0
        if r["model"].startswith("teacher:"):
            continue
        assert r["params"] > 0 and r["macs"] > 0 and r["train_seconds"] > 0
        if r["form"] == "keras":
            assert r["latency_ms_p50"] is None
        else:
            assert r["latency_ms_p50"] > 0 and np.isfinite(r["accuracy_drop_vs_keras"])
    sizes = {(r["model"], r["form"]): r["size_bytes"] for r in rows}
    for m in students:  # int8 < fp16 < fp32 TFLite
        assert sizes[(m, "int8")] < sizes[(m, "float16")] < sizes[(m, "none")]
    ranges = {(r["model"], r["form"]): r.get("activation_ranges") for r in rows}
    assert all(ranges[(m, "int8")] == "mse" and ranges[(m, "int8_minmax")] == "minmax" for m in students), ranges
    assert res["budget"]["steps"] == 2 and res["synthetic"] and res["cpu"]["isa"] is not None
    assert "SYNTHETIC" in (out / "results.md").read_text()
    assert (out / "accuracy_vs_latency.png").stat().st_size > 1000
    assert "[compare] training mobiface_gdc" in first

    # A rerun trains, exports and scores nothing again.
    again = run(out)
    assert "[compare] training" not in again and "[compare] exporting" not in again and \
        "[compare] scoring" not in again, again[-2000:]
    assert json.loads((out / "results.json").read_text())["rows"] == rows

    # An int8 file made with other activation ranges (e.g. before MSE ranges were the default) is exported again
    # (here to the same bytes, so its row stands); a changed file is scored again; nothing else is redone.
    report = out / "tflite" / "mobilenet_v1_gdc_int8.tflite.parity.json"
    old = json.loads(report.read_text())
    old.pop("activation_ranges")
    report.write_text(json.dumps(old))
    (out / "tflite" / "mobilefacenet_int8.tflite").write_bytes(
        (out / "tflite" / "mobilefacenet_int8_minmax.tflite").read_bytes())
    third = run(out)
    redone = sorted(line for line in third.splitlines() if line.startswith("[compare] ") and "timing" not in line)
    assert redone == ["[compare] exporting mobilenet_v1_gdc as int8",
                      "[compare] scoring mobilefacenet int8 on folds [1, 2, 3]"], third[-2000:]
    assert "[compare] timing" in third  # a changed file is timed again too


def test_compare_refuses_unknown_networks_and_missing_inputs(tmp_path):
    r = subprocess.run([sys.executable, "tools/compare.py", f"--output_dir={tmp_path}", "--models=resnet50"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "unknown network 'resnet50'" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "tools/compare.py", f"--output_dir={tmp_path}"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--lfw_dir" in r.stderr and "Traceback" not in r.stderr
