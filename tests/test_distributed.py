"""tf.distribute on CPU: MirroredStrategy over 2 logical CPUs vs one device on the same global batch, and
MultiWorkerMirroredStrategy with 2 worker processes on 127.0.0.1 (TF_CONFIG). Each runs in subprocesses so
the logical-device split and the collective runtime never leak into other tests."""
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mobiface_tf.data.synthetic import write_synthetic_tfrecords

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
COMMON = dict(embedding_dim=64, batch_size=8, steps=3, lr=0.05, log_every=1, ckpt_every=100, seed=5,
              deterministic=True, shuffle_buffer=64)

MIRRORED = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from mobiface_tf import train as tr
    data, out, common = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    one = tr.train(data, out + "/one", strategy_obj=tf.distribute.OneDeviceStrategy("/cpu:0"), **common)
    two = tr.train(data, out + "/two", strategy_obj=tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]),
                   sync_bn=True, **common)
    print("RESULT", json.dumps(dict(one=one["losses"], two=two["losses"], replicas=[one["replicas"], two["replicas"]])))
""")

WORKER = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    strategy = tf.distribute.MultiWorkerMirroredStrategy()  # before any other TF op
    from mobiface_tf import train as tr
    data, out, common, weights_file = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
    summary = tr.train(data, out, strategy_obj=strategy, sync_bn=True, **common)
    w = summary["backbone"].weights + summary["head"].weights
    np.savez(weights_file, *[v.numpy() for v in w])
    print("RESULT", json.dumps(dict(losses=summary["losses"], replicas=summary["replicas"])))
""")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth")
    write_synthetic_tfrecords(d, num_identities=6, images_per_identity=8, seed=2, shards=4)
    return d


def result(stdout: str) -> dict:
    return json.loads(next(line for line in stdout.splitlines() if line.startswith("RESULT "))[7:])


@pytest.mark.slow
def test_mirrored_two_cpus_matches_one_device(synth, tmp_path):
    """Same global batch of 8 (each replica takes 4 of the same 8 images), same init, --sync_bn.

    Compared: the loss of step 1 (forward on the same weights) within 1e-5 relative (observed ~4e-7), and of
    step 2 (after one update whose gradients were all-reduced over the 2 replicas) within 5e-3 relative
    (observed 1e-7 to 1.4e-3 depending on the data). A wrong reduction (e.g. averaging instead of summing
    the per-replica gradients) halves the update and moves the step-2 loss by several %.
    Not compared beyond: Keras' synchronised BN computes the variance in one pass as E[x^2] - E[x]^2, which
    loses float32 precision on channels whose mean is large against their spread, so some gradient buffers
    differ by a few % after one step (observed up to 5% of their RMS), and ArcFace (s = 64) on a batch of 8
    amplifies that into visibly different losses by step 3. Without sync BN each replica normalises with
    its own 4 images, a different computation altogether.
    (One MirroredStrategy per process: a second one in the same process clashed on collective keys.)
    """
    common = dict(COMMON, steps=2, lr=0.001)
    r = subprocess.run([sys.executable, "-c", MIRRORED, str(synth), str(tmp_path), json.dumps(common)],
                       capture_output=True, text=True, env=ENV, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = result(r.stdout)
    assert res["replicas"] == [1, 2]
    one, two = np.array(res["one"]), np.array(res["two"])
    print("one device:", one, "\nmirrored + sync BN:", two)
    np.testing.assert_allclose(two[0], one[0], rtol=1e-5)
    np.testing.assert_allclose(two[1], one[1], rtol=5e-3)
    assert abs(one[1] - one[0]) > 1e-3 * one[0], "the update should change the loss"


@pytest.mark.slow
def test_multi_worker_two_processes_identical_weights(synth, tmp_path):
    """Both workers end bit-identical: trainable weights (all-reduced gradients) and, with --sync_bn, the BN
    moving statistics too (with per-replica BN each worker would keep moving averages of its own images)."""
    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for i in range(2):
        env = dict(ENV, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
        procs.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, str(synth), str(tmp_path / "model"), json.dumps(COMMON),
             str(tmp_path / f"w{i}.npz")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            cwd=REPO))
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=400)
        finally:
            if p.poll() is None:
                p.kill()
        assert p.returncode == 0, err[-3000:]
        outs.append(result(out))
    assert [o["replicas"] for o in outs] == [2, 2]
    np.testing.assert_allclose(outs[0]["losses"], outs[1]["losses"], rtol=1e-6)  # reduced over both workers
    w0, w1 = np.load(tmp_path / "w0.npz"), np.load(tmp_path / "w1.npz")
    assert len(w0.files) == len(w1.files) > 100
    for k in w0.files:
        np.testing.assert_array_equal(w0[k], w1[k], err_msg=k)
    # The chief (worker 0) wrote the checkpoints and the embedding model; the other worker left nothing behind.
    assert (tmp_path / "model" / "embedding.keras").exists()
    assert sorted(p.name for p in (tmp_path / "model").iterdir() if "worker" in p.name) == []
