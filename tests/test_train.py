"""The trainer: schedule, weight-decay selection, a CLI smoke run, bad flags, NaN handling, mixed precision."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from conftest import lfw_style_heldout, train_config

from mobiface_tf.training.config import VAL_HISTORY, TrainConfig
from mobiface_tf.training.errors import TrainingDiverged
from mobiface_tf.training.loop import train, train_model
from mobiface_tf.training.model import build_backbone
from mobiface_tf.training.schedules import PiecewiseWithWarmup, decayed_variables
from mobiface_tf.data.synthetic import write_synthetic_tfrecords

from conftest import REPO  # noqa: E402  (the repo root, one definition for every test file)
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth")
    write_synthetic_tfrecords(d, num_identities=6, images_per_identity=8, seed=0, shards=4)
    return d


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "mobiface_tf.train", *args], capture_output=True, text=True,
                          env=ENV, cwd=REPO, timeout=timeout)


def test_paper_schedule():
    sched = PiecewiseWithWarmup(0.1, [40000, 60000, 80000], 0.1)
    got = [float(sched(s)) for s in (0, 39999, 40000, 59999, 60000, 80000, 99999)]
    np.testing.assert_allclose(got, [0.1, 0.1, 0.01, 0.01, 0.001, 1e-4, 1e-4], rtol=1e-5)
    warm = PiecewiseWithWarmup(0.1, [40000], 0.1, warmup_steps=100)
    np.testing.assert_allclose([float(warm(0)), float(warm(49)), float(warm(99)), float(warm(500))],
                               [0.001, 0.05, 0.1, 0.1], rtol=1e-5)
    with pytest.raises(ValueError, match="--lr must be > 0, got 0"):
        PiecewiseWithWarmup(0.0)


def test_weight_decay_only_on_kernels_and_centres():
    from mobiface_tf.heads import MarginHead

    net = build_backbone("mobiface", 64, "gdc")
    head = MarginHead(5)
    head.build((None, 64))
    names = {v.path.split("/")[-1] for v in decayed_variables(net.trainable_variables + head.trainable_variables)}
    assert names == {"kernel", "centres"}
    skipped = {v.path.split("/")[-1] for v in net.trainable_variables} - names
    assert skipped == {"gamma", "beta", "alpha"}  # BN and PReLU parameters


@pytest.mark.slow
def test_cli_smoke(synth, tmp_path):
    """A real 4-step run: log line with img/s, flags.txt, events, checkpoints, and a usable embedding.keras."""
    out = tmp_path / "run"
    held = lfw_style_heldout(tmp_path / "held")
    # The threshold sidecar of an earlier embedding.keras in this model_dir (stale-threshold-sidecar case):
    # training writes a new model, so it must not leave that sidecar beside it.
    out.mkdir()
    (out / "embedding.keras.eval.json").write_text(json.dumps({"threshold": -0.03, "num_positive": 300,
                                                               "num_negative": 300, "model_sha256": "0" * 64}))
    r = run_cli(f"--data={synth}/*.tfrecord", f"--model_dir={out}", "--batch_size=8", "--steps=4", "--log_every=2",
                "--ckpt_every=2", "--lr=0.01", "--embedding_dim=128", f"--val_lfw_dir={held}",
                f"--val_pairs={held / 'pairs.txt'}", "--val_every=4")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "img/s" in r.stdout + r.stderr
    assert "step 4  lfw verification accuracy" in r.stdout + r.stderr
    assert "--batch_size=8" in (out / "flags.txt").read_text()
    assert list((out / "train").glob("events.out.tfevents.*"))
    assert tf.train.latest_checkpoint(str(out / "checkpoints")).endswith("ckpt-4")
    assert not (out / "embedding.keras.eval.json").exists()  # removed when the new embedding.keras was written
    from mobiface_tf.embedder import load_embedder

    emb = load_embedder(out / "embedding.keras")
    x = np.random.default_rng(0).uniform(0, 255, (2, 112, 112, 3)).astype(np.float32)
    e = emb.embed(x)
    assert e.shape == (2, 128) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    # The saved model is the backbone only, float32, and has no margin head.
    assert emb.model.dtype_policy.name == "float32"
    assert not any("margin" in layer.name for layer in emb.model.layers)


@pytest.mark.slow
def test_bad_flags_one_line_error(synth, tmp_path):
    """Real CLI processes (run at once): non-zero exit, the message repeats the value, no traceback."""
    cases = [(["--backbone=resnet"], "--backbone"),
             (["--lr=-1"], "--lr must be > 0"),
             (["--data=/nonexistent/*.tfrecord"], "matched no files: '/nonexistent/*.tfrecord'")]
    base = [sys.executable, "-m", "mobiface_tf.train", f"--data={synth}", f"--model_dir={tmp_path / 'm'}", "--steps=1"]
    procs = [subprocess.Popen(base + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                              cwd=REPO) for args, _ in cases]  # later flags win: the bad value overrides the base
    for p, (args, expect) in zip(procs, cases):
        _, err = p.communicate(timeout=180)
        assert p.returncode != 0, args
        assert "Traceback" not in err, err[-2000:]
        assert expect in err, err[-2000:]


@pytest.mark.parametrize("kwargs,expect", [
    (dict(margin_m2=4.0), "0 <= m2 < pi"),
    (dict(lr=0.0), "--lr must be > 0, got 0.0"),
    (dict(lr_boundaries=[60, 40]), "increasing"),
    (dict(backbone="resnet"), "--backbone/--head: unknown network 'resnet'"),
    (dict(batch_size=0), "--batch_size must be >= 1, got 0"),
    (dict(val_lfw_dir="x"), "go together"),
])
def test_bad_arguments_raise_before_work(synth, tmp_path, kwargs, expect):
    with pytest.raises(ValueError, match=expect):
        train(train_config(synth, tmp_path, **kwargs))
    assert not (tmp_path / "checkpoints").exists()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(synth, tmp_path):
    """A diverging lr: the loop raises TrainingDiverged, and every checkpoint on disk holds finite weights."""
    with pytest.raises(TrainingDiverged, match="loss is (nan|inf).*last good checkpoint"):
        train(train_config(synth, tmp_path, backbone="mobiface", embedding_dim=32, batch_size=4, steps=40,
                           lr=1e12, ckpt_every=1, log_every=1, margin="softmax", weight_decay=0.0))
    latest = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
    assert latest is not None, "at least the first step(s) should have been saved before divergence"
    reader = tf.train.load_checkpoint(latest)
    floats = [n for n, d in reader.get_variable_to_dtype_map().items() if d.is_floating]
    assert any("centres" in n for n in floats)
    for name in floats:
        assert np.all(np.isfinite(reader.get_tensor(name))), name
    assert not (tmp_path / "embedding.keras").exists()


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_steps(synth, tmp_path, precision):
    import keras

    result = train_model(train_config(synth, tmp_path, embedding_dim=32, batch_size=4, steps=2, lr=0.01,
                                      log_every=1, mixed_precision=precision))
    summary = result.metrics
    assert np.all(np.isfinite(summary["losses"]))
    assert result.parts.head.dtype_policy.name == "float32"  # the margin head stays float32
    assert result.parts.backbone.dtype_policy.name == precision
    assert keras.mixed_precision.dtype_policy().name == "float32"  # restored for the caller
    reloaded = keras.models.load_model(summary["embedding_model"])
    assert reloaded.dtype_policy.name == "float32"


def test_chief_and_input_pipeline_ids_with_and_without_a_chief_job():
    from tensorflow.python.training.server_lib import ClusterSpec

    from mobiface_tf.training.strategy import cluster_id

    def resolver(jobs, task_type, task_id):
        return tf.distribute.cluster_resolver.SimpleClusterResolver(ClusterSpec(jobs), task_type=task_type,
                                                                    task_id=task_id)

    workers_only = {"worker": ["a:1", "b:1"]}
    assert [cluster_id(resolver(workers_only, "worker", i)) for i in (0, 1)] == [0, 1]
    with_chief = {"chief": ["c:1"], "worker": ["a:1", "b:1"]}
    assert cluster_id(resolver(with_chief, "chief", 0)) == 0
    assert [cluster_id(resolver(with_chief, "worker", i)) for i in (0, 1)] == [1, 2]  # worker 0 is not chief
    assert cluster_id(None) == 0


SKIP_TOGETHER = """
import json
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from mobiface_tf.training.step import skip_together
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

def grads(bad_replica):  # replica `bad_replica` overflowed (an Inf in one gradient); the other did not
    rid = tf.distribute.get_replica_context().replica_id_in_sync_group
    first = tf.where(tf.equal(rid, bad_replica), tf.constant([1.0, float("inf")]), tf.constant([1.0, 2.0]))
    return skip_together([first, tf.constant([[3.0]])])

out = {}
for bad in (-1, 1):  # -1: no replica overflowed
    per_replica = strategy.run(tf.function(lambda: grads(bad)))
    out[str(bad)] = [[v.numpy().ravel().tolist() for v in strategy.experimental_local_results(g)]
                     for g in per_replica]
print("RESULT", json.dumps(out, allow_nan=True))
"""


def test_fp16_overflow_on_one_replica_poisons_every_replica():
    """fp16 loss scaling on 2 replicas (MirroredStrategy over 2 logical CPUs, in a subprocess so the device split
    does not leak): replica 1's gradients overflow, replica 0's do not. skip_together makes BOTH replicas'
    gradients NaN (so Keras skips the update everywhere); without the all-reduce replica 0 would keep finite
    gradients and apply them. With no overflow the gradients pass unchanged."""
    import json

    r = subprocess.run([sys.executable, "-c", SKIP_TOGETHER], capture_output=True, text=True, env=ENV, cwd=REPO,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    for grad in out["-1"]:  # [replica0, replica1] values of each gradient
        assert len(grad) == 2 and np.isfinite(grad).all()
    assert out["-1"][0] == [[1.0, 2.0], [1.0, 2.0]]
    for grad in out["1"]:
        assert len(grad) == 2  # two replicas really ran
        assert all(np.isnan(v).all() for v in grad), grad  # replica 0 (finite on its own) is poisoned too


@pytest.mark.slow
def test_corrupt_shard_names_it_or_is_skipped(synth, tmp_path):
    """A shard corrupted in place (same size, so only reading finds it): one-line error naming the shard;
    with --skip_corrupt the run goes on with the readable records."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synth, data)
    shard = sorted(data.glob("*.tfrecord"))[1]
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 64] = bytes(64)  # zero 64 bytes mid-file: a record's CRC fails
    shard.write_bytes(bytes(raw))
    common = [f"--data={data}", "--batch_size=8", "--steps=2", "--log_every=1", "--embedding_dim=64"]
    r = run_cli(*common, f"--model_dir={tmp_path / 'a'}")
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and shard.name in last and "Traceback" not in r.stderr, r.stderr[-2000:]
    r = run_cli(*common, f"--model_dir={tmp_path / 'b'}", "--skip_corrupt")
    assert r.returncode == 0, r.stderr[-3000:]
    assert shard.name in r.stderr  # the warning names it


def heldout_bin(path: Path, num_ids: int = 10, seed: int = 7) -> Path:
    """An InsightFace-format .bin of synthetic identities never trained on (another seed): 30 same-identity and
    30 different-identity pairs, alternating."""
    import pickle

    from mobiface_tf.data.synthetic import render_identity
    from mobiface_tf.data.tfrecord import encode_jpeg

    faces = [render_identity(seed, i, 4) for i in range(num_ids)]
    rng = np.random.default_rng(0)
    images, issame = [], []
    for k in range(30):
        i, (a, b) = k % num_ids, rng.choice(4, 2, replace=False)
        j = (i + 1 + k // num_ids) % num_ids
        images += [encode_jpeg(faces[i][a]), encode_jpeg(faces[i][b]), encode_jpeg(faces[i][a]), encode_jpeg(faces[j][b])]
        issame += [True, False]
    path.write_bytes(pickle.dumps((images, issame)))
    return path


@pytest.mark.slow
def test_learns_on_synthetic_identities(tmp_path):
    """Learning, without ../shared/data: 60 ArcFace steps (batch 16) on 8 synthetic identities. The loss falls
    (last 10 steps below half the first 10), and held-out verification on 12 synthetic identities never trained
    on (another seed; all 2,145 pairs of 72 images) rises above the same network's untrained value: ROC AUC up
    (observed 0.83 -> 0.86-0.90) and the same-minus-different mean cosine at least doubled (observed 0.12 ->
    0.5-0.6). A trainer whose updates do nothing, or go the wrong way, fails. Also runs --val_bin during training.
    ~55 s on 2 busy cores."""
    import json

    import keras

    from mobiface_tf import evaluate as ev
    from mobiface_tf.data.synthetic import render_identity

    data = tmp_path / "train"
    write_synthetic_tfrecords(data, num_identities=8, images_per_identity=16, seed=0, shards=2)
    faces = np.concatenate([render_identity(11, i, 6) for i in range(12)]).astype(np.float32)
    same = np.equal.outer(np.repeat(np.arange(12), 6), np.repeat(np.arange(12), 6))[np.triu_indices(72, 1)]

    def heldout(model):
        """(ROC AUC, mean cosine of same-identity pairs minus that of different-identity pairs)."""
        e = np.array(model(faces, training=False), np.float64)
        e /= np.linalg.norm(e, axis=1, keepdims=True)
        scores = (e @ e.T)[np.triu_indices(72, 1)]
        fpr, tpr = ev.roc_curve(scores, same)
        return float(np.trapezoid(tpr, fpr)), float(scores[same].mean() - scores[~same].mean())

    keras.utils.set_random_seed(0)  # the initial weights train() starts from (same seed, same builder)
    auc0, gap0 = heldout(build_backbone("mobiface", 64, "gdc"))
    val = heldout_bin(tmp_path / "heldout.bin")
    summary = train(train_config(data, tmp_path / "m", backbone="mobiface", head="gdc", embedding_dim=64, seed=0,
                                 batch_size=16, steps=60, lr=0.1, warmup_steps=5, lr_boundaries=[], log_every=10,
                                 shuffle_buffer=256, val_bin=str(val), val_every=60))
    auc, gap = heldout(keras.models.load_model(summary["embedding_model"]))
    losses = np.array(summary["losses"])
    print(f"loss {losses[:10].mean():.2f} -> {losses[-10:].mean():.2f}; held-out AUC {auc0:.3f} -> {auc:.3f}, "
          f"cosine gap {gap0:.3f} -> {gap:.3f}")
    assert np.isfinite(losses).all() and losses[-10:].mean() < 0.5 * losses[:10].mean()
    assert auc > auc0 + 0.01 and gap > 2 * gap0
    # --val_bin during training: scored at step 60 and logged to the learning curve next to the checkpoints.
    history = [json.loads(line) for line in (tmp_path / "m" / VAL_HISTORY).read_text().splitlines()]
    assert [(h["step"], h["dataset"]) for h in history] == [(60, "bin")]
    assert history[0]["accuracy"] == summary["val_bin_accuracy"] > 0.5


def test_network_names_resolve_once_and_head_is_honoured():
    """--backbone takes builder or zoo names through models.zoo.resolve (the resolver to_tflite, bench and compare
    use); --head is honoured for every builder, MobileFaceNet included, and a head contradicting a zoo name fails."""
    names = lambda m: {l.name for l in m.layers}  # noqa: E731
    gdc, gap = build_backbone("mobilefacenet", 128, "gdc"), build_backbone("mobilefacenet", 128, "gap")
    assert "embedding_gdc_conv" in names(gdc) and "embedding_gdc_conv" not in names(gap)
    assert gdc.count_params() == 1_022_720 != gap.count_params()  # gdc: MobileFaceNet's own head (pinned count)
    cases = [(dict(), ("mobiface", "gdc", 512)),
             (dict(backbone="mobilefacenet"), ("mobilefacenet", "gdc", 128)),  # the zoo's: Chen et al.'s 128-d
             (dict(backbone="mobilefacenet", head="fc"), ("mobilefacenet", "fc", 128)),
             (dict(backbone="mobilenet_v1", head="gap"), ("mobilenet_v1", "gap", 512)),  # builder name: 512-d
             (dict(backbone="mobiface_fc"), ("mobiface_fc", "fc", 512)),
             (dict(backbone="mobilefacenet", embedding_dim=64), ("mobilefacenet", "gdc", 64)),
             (dict(backbone="mobiface_gdc", embedding_dim=128), ("mobiface_gdc", "gdc", 128)),
             (dict(backbone="mobilefacenet_512", head="gdc"), ("mobilefacenet_512", "gdc", 512))]
    for settings, want in cases:
        cfg = TrainConfig(data="x", model_dir="y", **settings)
        cfg.validate()
        assert (cfg.backbone, cfg.head, cfg.embedding_dim) == want, settings
    with pytest.raises(ValueError, match="--backbone/--head: network 'mobiface_gdc' has head 'gdc', not 'fc'"):
        TrainConfig(data="x", model_dir="y", backbone="mobiface_gdc", head="fc").validate()
    with pytest.raises(ValueError, match="unknown network 'resnet'"):
        TrainConfig(data="x", model_dir="y", backbone="resnet").validate()
    s1 = build_backbone("mobilenet_v1_fc_s1", None, None)  # a zoo entry beyond head/dim: final_stride=1
    assert s1.count_params() == 28_921_024 and s1.get_layer("block11_dw_conv").strides == (1, 1)


def test_resume_with_changed_settings(tmp_path):
    """A new --batch_size resumes (weights, optimizer, step restored; a fresh data iterator, said in the log);
    a setting that defines the network stops with one line naming it; flags.txt keeps the first run's settings
    and appends what changed (case resume-changed-batch-misleading)."""
    import subprocess
    import sys

    from mobiface_tf.data.synthetic import write_synthetic_tfrecords

    data = tmp_path / "data"
    write_synthetic_tfrecords(data, 8, 4, 0, 1)
    run = tmp_path / "run"
    base = [sys.executable, "-m", "mobiface_tf.train", f"--data={data}", f"--model_dir={run}", "--head=gdc",
            "--embedding_dim=32", "--ckpt_every=2", "--log_every=1", "--shuffle_buffer=32"]
    repo = Path(__file__).resolve().parents[1]

    def train(*extra):
        return subprocess.run(base + list(extra), capture_output=True, text=True, cwd=repo, timeout=300)

    first = train("--batch_size=16", "--steps=2")
    assert first.returncode == 0, first.stderr[-2000:]
    flags_before = (run / "flags.txt").read_text()
    second = train("--batch_size=8", "--steps=4")
    out = second.stdout + second.stderr
    assert second.returncode == 0, out[-3000:]
    assert "at step 2 with a fresh data iterator" in out and "batch_size 16 -> 8" in out, out[-3000:]
    assert "done at step 4" in out
    flags = (run / "flags.txt").read_text()
    assert flags.startswith(flags_before) and "--batch_size=16" in flags_before
    assert "# resumed at step 2 with: --batch_size=8" in flags
    third = train("--batch_size=8", "--steps=6", "--embedding_dim=64")
    assert third.returncode != 0 and "Traceback" not in third.stderr
    line = third.stderr.strip().splitlines()[-1]
    assert "--embedding_dim was 32" in line and "is 64 now" in line and "--model_dir" in line, line
    assert (run / "flags.txt").read_text() == flags  # nothing written by the refused run
