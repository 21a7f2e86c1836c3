"""Exact resume: a real training process SIGKILLed after a checkpoint, resumed to N steps, ends with the same
weights (model, margin head, optimizer slots) as an uninterrupted N-step run, within 1e-5 (op determinism on)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import checkpoint_float_vars as float_vars, kill_after_first_checkpoint
from mobiface_tf.data.synthetic import write_synthetic_tfrecords

STEPS = 8


def cmd(data, model_dir):
    return [sys.executable, "-m", "mobiface_tf.train", f"--data={data}", f"--model_dir={model_dir}",
            "--backbone=mobiface", "--head=gdc", "--embedding_dim=64", "--batch_size=4", f"--steps={STEPS}",
            "--lr=0.05", "--ckpt_every=2", "--log_every=1", "--deterministic", "--seed=3", "--shuffle_buffer=64"]


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    data = tmp_path / "data"
    write_synthetic_tfrecords(data, num_identities=5, images_per_identity=8, seed=1, shards=2)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    full, killed = tmp_path / "full", tmp_path / "killed"
    # The uninterrupted reference runs at the same time as the run we kill (2 cores, saves wall time).
    ref = subprocess.Popen(cmd(data, full), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    at_kill = kill_after_first_checkpoint(cmd(data, killed), killed, env)
    assert at_kill is not None, "the victim was killed before writing any checkpoint"
    k = int(at_kill.rsplit("-", 1)[1])
    assert k < STEPS and not (killed / "embedding.keras").exists(), f"the victim finished before the kill (ckpt {k})"

    resumed = subprocess.run(cmd(data, killed), capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {at_kill} at step {k}" in resumed.stdout + resumed.stderr
    _, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err[-3000:]

    a = float_vars(tf.train.latest_checkpoint(str(full / "checkpoints")))
    b = float_vars(tf.train.latest_checkpoint(str(killed / "checkpoints")))
    assert a.keys() == b.keys() and any("centres" in n for n in a) and any(n.startswith("optimizer/") for n in a)
    worst = max(float(np.max(np.abs(a[n] - b[n]))) for n in a)
    assert worst <= 1e-5, f"resumed weights differ by {worst}"
    # Not vacuous: between the earliest kept checkpoint and the end, training moved weights far beyond 1e-5.
    earliest = tf.train.get_checkpoint_state(str(full / "checkpoints")).all_model_checkpoint_paths[0]
    e = float_vars(earliest)
    assert max(float(np.max(np.abs(e[n] - a[n]))) for n in a) > 1e-3
