"""Fine-tuning from an embedding .keras (issue 24 item 4): --init_from loads the exact weights (fresh margin
head), refuses another architecture with one line, --freeze_body_steps keeps the body still for N steps, and
resume, MirroredStrategy and the NaN guard work with them."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import train_config
from mobiface_tf.data.synthetic import write_synthetic_tfrecords

from conftest import REPO  # noqa: E402  (the repo root, one definition for every test file)
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONDONTWRITEBYTECODE="1")
NET = dict(backbone="mobiface", head="gdc", embedding_dim=16)
TINY = dict(NET, batch_size=8, log_every=1, lr=0.05, shuffle_buffer=32, ckpt_every=1)


def pretrained(path, seed=7):
    """An embedding .keras saved by this project (save_embedding_model) whose every weight, BN statistics
    included, is moved at random from the builder's init (kernels + noise, BN scales, offsets and statistics
    drawn around 1 / 0): a fresh network of the same shape can match it only by loading it."""
    import keras

    from mobiface_tf.training.embedding import save_embedding_model
    from mobiface_tf.training.model import build_backbone

    keras.utils.set_random_seed(seed)
    net = build_backbone(NET["backbone"], NET["embedding_dim"], NET["head"])
    rng = np.random.default_rng(seed)
    for w in net.weights:
        noise = rng.normal(0, 0.05, w.shape)
        name = w.path.rsplit("/", 1)[-1]
        value = (1 + np.abs(noise) if name in ("gamma", "moving_variance") else
                 np.array(w) + 0.1 * noise if "kernel" in name else np.array(w) + noise)
        w.assign(value.astype(np.float32))
    return save_embedding_model(net, NET["backbone"], NET["embedding_dim"], NET["head"], path)


def layer_weights(model, body: bool) -> dict:
    """{layer name: [arrays]} of the body's layers (body=True) or of the embedding head's (False)."""
    from mobiface_tf.training.model import body_layers

    chosen = {layer.name for layer in body_layers(model)}
    return {layer.name: [np.array(w) for w in layer.get_weights()] for layer in model.layers
            if layer.weights and (layer.name in chosen) == body}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(x, y) for k in a for x, y in zip(a[k], b[k]))


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    d = tmp_path_factory.mktemp("synth")
    write_synthetic_tfrecords(d, num_identities=6, images_per_identity=8, seed=0, shards=2)
    return d


@pytest.fixture(scope="module")
def init_file(tmp_path_factory):
    return pretrained(tmp_path_factory.mktemp("init") / "pretrained.keras")


def test_init_from_loads_the_exact_weights_and_refuses_another_network(synth, init_file, tmp_path):
    """Right after init (before any step) the backbone holds the file's arrays exactly (weights and BN statistics,
    loaded, not computed); the margin head is new. Another --embedding_dim or --head: one line naming the first
    differing layer with both shapes."""
    import keras
    import tensorflow as tf

    from mobiface_tf.training.model import build_parts
    from mobiface_tf.training.schedules import make_schedule

    cfg = train_config(synth, tmp_path, init_from=str(init_file), **NET)
    cfg.validate()
    parts = build_parts(cfg, tf.distribute.OneDeviceStrategy("/cpu:0"), make_schedule(cfg), 6, 0, cfg.init_from)
    src = keras.models.load_model(init_file, compile=False)
    assert len(parts.backbone.weights) == len(src.weights) > 100
    for mine, theirs in zip(parts.backbone.weights, src.weights):
        np.testing.assert_array_equal(np.array(mine), np.array(theirs), err_msg=mine.path)
    assert tuple(parts.head.centres.shape) == (6, 16)  # a fresh margin head: 6 class centres

    for settings, layer, want in ((dict(embedding_dim=32), "embedding_linear_conv", r"\(1, 1, 512, 16\)\] in the "
                                   r"file and 'embedding_linear_conv' \[\(1, 1, 512, 32\)\] here"),
                                  (dict(head="fc"), "embedding_gdc_conv", "'embedding_dense'")):
        bad = train_config(synth, tmp_path / "bad", init_from=str(init_file), **dict(NET, **settings))
        bad.validate()
        with pytest.raises(ValueError, match=rf"does not fit --backbone=mobiface .*weighted layer \d+ is '{layer}' "
                                             rf".*{want}") as e:
            build_parts(bad, tf.distribute.OneDeviceStrategy("/cpu:0"), make_schedule(bad), 6, 0, bad.init_from)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="--init_from='/nonexistent.keras': no such file"):
        train_config(synth, tmp_path, init_from="/nonexistent.keras", **NET).validate()


@pytest.mark.slow
def test_frozen_body_stays_for_n_steps_then_trains_and_resume_keeps_the_checkpoint(synth, init_file, tmp_path,
                                                                                     caplog):
    """--freeze_body_steps=3: after 2 steps every body weight and BN statistic is still the file's (while the
    embedding head moved); the run resumed to step 5 (--init_from still given: the checkpoint wins) has moved
    the body."""
    import logging

    from mobiface_tf.training.loop import train_model

    import keras

    src = keras.models.load_model(init_file, compile=False)
    src_body, src_head = layer_weights(src, body=True), layer_weights(src, body=False)
    common = dict(TINY, init_from=str(init_file), freeze_body_steps=3)
    first = train_model(train_config(synth, tmp_path, steps=2, **common))
    assert same(layer_weights(first.parts.backbone, body=True), src_body)
    assert not same(layer_weights(first.parts.backbone, body=False), src_head)
    assert all(layer.trainable for layer in first.parts.backbone.layers)  # unfrozen for the caller
    with caplog.at_level(logging.INFO, logger="mobiface_tf.training"):
        second = train_model(train_config(synth, tmp_path, steps=5, **common))
    assert second.metrics["start_step"] == 2 and second.metrics["final_step"] == 5
    assert any("--init_from" in r.getMessage() and "checkpoint wins" in r.getMessage() for r in caplog.records)
    assert any("step 4: body unfrozen" in r.getMessage() for r in caplog.records)
    moved = layer_weights(second.parts.backbone, body=True)
    changed = [k for k in moved if not all(np.array_equal(x, y) for x, y in zip(moved[k], src_body[k]))]
    assert len(changed) > 0.9 * len(moved), f"only {len(changed)} of {len(moved)} body layers changed"


@pytest.mark.slow
def test_fine_tuning_from_init_lowers_the_loss(synth, init_file, tmp_path):
    """40 ArcFace steps (batch 16) from the file's weights on 6 synthetic identities, the body frozen for the
    first 5: the mean loss of the last 10 steps is below 70% of the first 10 (a trainer whose updates do
    nothing, or go the wrong way, fails)."""
    from mobiface_tf.training.loop import train

    m = train(train_config(synth, tmp_path, steps=40, init_from=str(init_file), freeze_body_steps=5,
                           **dict(TINY, batch_size=16, lr=0.1, ckpt_every=40, log_every=10, warmup_steps=5,
                                  lr_boundaries=[], shuffle_buffer=64)))
    losses = np.array(m["losses"])
    print(f"fine-tuning loss: first 10 steps {losses[:10].mean():.2f}, last 10 {losses[-10:].mean():.2f}")
    assert np.isfinite(losses).all() and losses[-10:].mean() < 0.7 * losses[:10].mean()


MIRRORED = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from mobiface_tf.training.config import TrainConfig
    from mobiface_tf.training.errors import TrainingDiverged
    from mobiface_tf.training.loop import train_model
    from mobiface_tf.training.model import body_layers
    data, out, init, common = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    src = keras.models.load_model(init, compile=False)
    body = lambda m: [w for layer in body_layers(m) for w in layer.get_weights()]
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])  # one per process (collective keys)
    res = {}
    r = train_model(TrainConfig(data=data, model_dir=out + "/m", steps=1, **common), strategy=strategy)
    res["frozen_same"] = all(np.array_equal(a, b) for a, b in zip(body(r.parts.backbone), body(src)))
    res["replicas"] = r.metrics["replicas"]
    r = train_model(TrainConfig(data=data, model_dir=out + "/m", steps=4, **common), strategy=strategy)
    res["resumed_from"] = r.metrics["start_step"]
    res["body_changed"] = sum(not np.array_equal(a, b) for a, b in zip(body(r.parts.backbone), body(src)))
    res["body_arrays"] = len(body(src))
    try:
        train_model(TrainConfig(data=data, model_dir=out + "/nan", steps=20, **dict(common, lr=1e12,
                    margin="softmax", weight_decay=0.0)), strategy=strategy)
        res["diverged"] = None
    except TrainingDiverged as e:
        res["diverged"] = str(e)
    print("RESULT", json.dumps(res))
""")


@pytest.mark.slow
def test_init_from_under_mirrored_strategy_with_resume_and_nan_guard(synth, init_file, tmp_path):
    """MirroredStrategy over 2 logical CPUs (a subprocess): --init_from with --freeze_body_steps=2 keeps the
    file's body after step 1; the run resumed to step 4 (frozen at step 2, unfrozen at 3 and 4: both step
    functions under one strategy) moves it; a diverging lr still stops with TrainingDiverged."""
    common = dict(TINY, init_from=str(init_file), freeze_body_steps=2, seed=1)
    r = subprocess.run([sys.executable, "-c", MIRRORED, str(synth), str(tmp_path), str(init_file), json.dumps(common)],
                       capture_output=True, text=True, env=ENV, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    assert res["replicas"] == 2 and res["frozen_same"] and res["resumed_from"] == 1
    assert res["body_changed"] > 0.5 * res["body_arrays"], res
    assert res["diverged"] and "last good checkpoint" in res["diverged"], res
