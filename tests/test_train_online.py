"""The trainer with an online teacher (function matching): flags, the in-step teacher, a short run, exact resume."""
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import checkpoint_float_vars, make_onnx_embedder, save_tiny_model
from mobiface_tf.data.synthetic import write_synthetic_tfrecords
from mobiface_tf.teacher import OnlineTeacher
from mobiface_tf.training.config import TrainConfig
from mobiface_tf.training.loop import train, train_model
from mobiface_tf.training.model import build_backbone, make_optimizer
from mobiface_tf.training.step import make_train_step


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("online_shards")
    write_synthetic_tfrecords(d, 4, 6, seed=1, shards=2)
    return d


def test_flags_that_cannot_work_together_are_refused():
    base = dict(data="x", model_dir="y", embedding_dim=16)
    bad = [
        (dict(teacher="t.tflite"), "distill_weight"),
        (dict(distill_weight=1.0, augment=True), "online --teacher"),
        (dict(distill_weight=1.0, teacher="t.tflite", mixup=0.5), "margin=none"),
        (dict(distill_weight=1.0, teacher="t.tflite", margin="none", mixup=0.7, cutmix=0.5), "cutmix"),
        (dict(augment=True, aug_scale=2.0), "scale"),
        (dict(distill_weight=1.0, teacher="t.tflite", teacher_preprocess="bgrx"), "teacher_preprocess"),
    ]
    for settings, words in bad:
        with pytest.raises(ValueError, match=words):
            TrainConfig(**base, **settings).validate()
    ok = TrainConfig(**base, distill_weight=1.0, teacher="t.tflite", margin="none", augment=True, mixup=0.5)
    ok.validate()
    aug = ok.augment_config()
    assert aug.mixup == 0.5 and aug.scale > 0 and aug.flip
    assert TrainConfig(**base).augment_config() is None  # today's recipe: flip only
    only_mix = TrainConfig(**base, distill_weight=1.0, teacher="t", margin="none", mixup=1.0).augment_config()
    assert only_mix.scale == 0 and only_mix.cutout == 0 and only_mix.mixup == 1.0


def _one_step_weights(images, teacher_emb, teacher_fn):
    """The backbone's weights after one SGD step from seed 3, distilling towards the given targets."""
    keras.utils.set_random_seed(3)
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        net = build_backbone("mobiface", 12, "gdc")
        opt = make_optimizer(0.1, 0.9)
        opt.build(net.trainable_variables)
    step = make_train_step(strategy, net, None, opt, 0.0, len(images), distill_weight=1.0, teacher_fn=teacher_fn)
    labels = np.zeros(len(images), np.int32)
    elem = (images, labels) if teacher_fn is not None else (images, labels, teacher_emb)
    kd = step(iter(tf.data.Dataset.from_tensors(elem)))[-1]
    return float(kd), [w.numpy() for w in net.trainable_weights]


@pytest.mark.slow
def test_keras_teacher_in_the_step_embeds_the_student_batch(tmp_path):
    teacher = OnlineTeacher(save_tiny_model(tmp_path / "t.keras", dim=12, seed=2))
    images = np.random.default_rng(4).uniform(0, 255, (4, 112, 112, 3)).astype(np.float32)
    # In the step, on the student's images ...
    kd_a, w_a = _one_step_weights(images, None, teacher.embed_in_graph)
    # ... equals the step given the teacher's embeddings of those images computed independently.
    kd_b, w_b = _one_step_weights(images, teacher.embed_numpy(images), None)
    assert abs(kd_a - kd_b) < 1e-5 and kd_a > 1e-3
    for a, b in zip(w_a, w_b):
        np.testing.assert_allclose(a, b, atol=1e-5)


def _cfg(data, model_dir, teacher, **kw):
    settings = dict(embedding_dim=16, margin="none", distill_weight=1.0, batch_size=8, steps=4, lr=0.05, log_every=1,
                    ckpt_every=2, seed=7, deterministic=True, shuffle_buffer=32, augment=True, mixup=0.5, cutmix=0.2)
    return TrainConfig(data=str(data), model_dir=str(model_dir), teacher=str(teacher), **{**settings, **kw})


@pytest.mark.slow
def test_online_onnx_teacher_trains_and_resumes_exactly(shards, tmp_path):
    teacher, _ = make_onnx_embedder(tmp_path / "teacher.onnx", dim=8)  # 8-d: a projection from the 16-d student
    full = train(_cfg(shards, tmp_path / "full", teacher))
    assert len(full["distill_losses"]) == 4 and all(np.isfinite(full["distill_losses"]))
    settings = json.loads((tmp_path / "full" / "config.json").read_text())
    assert settings["teacher"] == str(teacher) and settings["teacher_dim"] == 8 and settings["mixup"] == 0.5
    # Two steps, then a second run resumes from the step-2 checkpoint (weights, optimizer and data iterator).
    train(_cfg(shards, tmp_path / "split", teacher, steps=2))
    resumed = train(_cfg(shards, tmp_path / "split", teacher))
    assert resumed["start_step"] == 2
    np.testing.assert_allclose(resumed["distill_losses"], full["distill_losses"][2:], atol=1e-5)
    a = checkpoint_float_vars(tf.train.latest_checkpoint(str(tmp_path / "full" / "checkpoints")))
    b = checkpoint_float_vars(tf.train.latest_checkpoint(str(tmp_path / "split" / "checkpoints")))
    assert any(n.startswith("projection/") for n in a)
    for n in a:
        np.testing.assert_allclose(a[n], b[n], atol=1e-5, err_msg=n)


@pytest.mark.slow
def test_keras_teacher_run_and_missing_teacher(shards, tmp_path):
    teacher = save_tiny_model(tmp_path / "t.keras", dim=16, seed=0)
    r = train_model(_cfg(shards, tmp_path / "k", teacher, steps=2))
    assert r.parts.projection is None and all(np.isfinite(r.metrics["distill_losses"]))
    with pytest.raises(ValueError, match="--teacher.*not found"):
        train(_cfg(shards, tmp_path / "m", tmp_path / "missing.tflite"))
