"""One training per --model_dir (case two-trainings-one-model-dir/): a second run into a folder a live run holds
stops at once (exit 2, one line naming the holder's pid); a stale lock left by a killed run is taken over, with a
warning naming it; final files are written under unique temporary names and renamed into place."""
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import train_config
from mobiface_tf.data.synthetic import write_synthetic_tfrecords

from conftest import REPO  # noqa: E402  (the repo root, one definition for every test file)
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONDONTWRITEBYTECODE="1")
TINY = dict(embedding_dim=16, batch_size=4, log_every=1, lr=0.01, shuffle_buffer=16)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth")
    write_synthetic_tfrecords(d, num_identities=4, images_per_identity=4, seed=0, shards=1)
    return d


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _cli(data, model_dir, *extra):
    return [sys.executable, "-m", "mobiface_tf.train", f"--data={data}", f"--model_dir={model_dir}",
            "--embedding_dim=16", "--batch_size=4", "--log_every=1", "--lr=0.01", "--shuffle_buffer=16", *extra]


@pytest.mark.slow
def test_second_training_into_a_live_runs_model_dir_stops_at_once(synth, tmp_path):
    """A real training (A) runs; a second one (B: the same command with fewer steps, as a scheduler's retry) into
    the same --model_dir exits 2 with one line naming A's pid, and changes nothing there. Then A is SIGKILLed: its lock file stays behind (stale), and the
    next run takes it over, says so, and finishes. Without the lock B trains over A's folder and exits 0."""
    run = tmp_path / "run"
    a = subprocess.Popen(_cli(synth, run, "--steps=100000", "--ckpt_every=1"), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, env=ENV, cwd=REPO)
    try:
        deadline = time.time() + 240
        while not (run / "checkpoints" / "checkpoint").exists() and a.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert a.poll() is None, f"A stopped early: {a.stderr.read()[-2000:]}"
        config = (run / "config.json").read_text()
        t0 = time.time()
        b = subprocess.run(_cli(synth, run, "--steps=2", "--ckpt_every=1"), capture_output=True, text=True,
                           env=ENV, cwd=REPO, timeout=240)
        print(f"second run stopped after {time.time() - t0:.1f} s (process start included)")
        assert b.returncode == 2, (b.returncode, b.stderr[-2000:])
        err = b.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and f"is being trained by pid {a.pid}" in err[0], err
        assert str(run) in err[0] and "another --model_dir" in err[0]
        # B wrote nothing: A's config stands, and no model was saved.
        assert (run / "config.json").read_text() == config and not (run / "embedding.keras").exists()
        assert a.poll() is None  # A still runs
    finally:
        a.send_signal(signal.SIGKILL)
        a.wait()
    holder = json.loads((run / ".train.lock").read_text())
    assert holder["pid"] == a.pid  # left behind by the killed run
    r = subprocess.run(_cli(synth, run, "--steps=1"), capture_output=True, text=True, env=ENV, cwd=REPO, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"took over the stale lock {run / '.train.lock'} left by pid {a.pid}" in r.stdout + r.stderr
    assert not (run / ".train.lock").exists()  # released at the end


def test_stale_lock_of_a_dead_pid_is_taken_over(synth, tmp_path, caplog):
    """A lock file whose run is gone (its pid no longer exists, as after a SIGKILL or a power cut): the next
    training takes it over with a warning naming that pid, trains, and removes the lock at the end."""
    from mobiface_tf.training.loop import train

    run = tmp_path / "run"
    run.mkdir()
    pid = _dead_pid()
    (run / ".train.lock").write_text(json.dumps(dict(pid=pid, host="h", started="2026-01-01 00:00:00")) + "\n")
    with caplog.at_level(logging.INFO, logger="mobiface_tf.training"):
        out = train(train_config(synth, run, steps=1, **TINY))
    assert out["final_step"] == 1 and (run / "embedding.keras").is_file()
    assert any(f"took over the stale lock {run / '.train.lock'} left by pid {pid}" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert not (run / ".train.lock").exists()


def test_lock_held_by_another_process_and_released_when_it_dies(tmp_path):
    """The lock itself, between two real processes: busy (naming the holder's pid) while the holder lives; free,
    and reported as taken over, once it was SIGKILLed (the kernel drops its flock; the file stays)."""
    from mobiface_tf.locks import ModelDirBusy, ModelDirLock

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom mobiface_tf.locks import "
                               "ModelDirLock\nModelDirLock(sys.argv[1]).acquire()\nprint('held', flush=True)\n"
                               "time.sleep(120)", str(tmp_path)], stdout=subprocess.PIPE, text=True, env=ENV,
                              cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ModelDirBusy, match=rf"is being trained by pid {holder.pid} .*another --model_dir"):
            ModelDirLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with ModelDirLock(tmp_path) as lock:
        assert lock.took_over["pid"] == holder.pid
        assert json.loads((tmp_path / ".train.lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / ".train.lock").exists()


def test_final_files_use_unique_temporary_names_and_never_replace_a_model_with_a_broken_one(tmp_path, monkeypatch):
    """Two writers never share a temporary name; a save that fails midway leaves the previous embedding.keras
    whole and no temporary file behind."""
    import keras

    from mobiface_tf.atomic import temp_beside, write_text_atomic
    from mobiface_tf.training.embedding import save_embedding_model
    from mobiface_tf.training.model import build_backbone

    target = tmp_path / "embedding.keras"
    a, b = temp_beside(target, keep_suffix=True), temp_beside(target, keep_suffix=True)
    assert a != b and a.parent == b.parent == tmp_path and a.suffix == ".keras"
    a.unlink(), b.unlink()
    write_text_atomic(tmp_path / "config.json", "{}\n")
    keras.utils.set_random_seed(0)
    net = build_backbone("mobiface", 16, "gdc")
    save_embedding_model(net, "mobiface", 16, "gdc", target)
    before = target.read_bytes()

    def half_save(self, path, *args, **kwargs):  # a full disk in the middle of the write
        Path(path).write_bytes(b"PK\x03\x04 half a zip")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(keras.Model, "save", half_save)
    with pytest.raises(OSError, match="cannot write the embedding model"):
        save_embedding_model(net, "mobiface", 16, "gdc", target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "embedding.keras"]
