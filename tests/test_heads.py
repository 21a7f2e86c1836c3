"""Margin heads against an independent NumPy reference (arccos-based), plus the numerics at cos = +-1."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from mobiface_tf.heads import MARGINS, MarginHead, margin_params, target_logit


def np_logits(x, w, labels, s, m1, m2, m3):
    """Reference: theta = arccos(cos) directly, fallback cos - (1 + cos(theta_t)) past theta_t."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    cos = np.clip(x @ w.T, -1.0, 1.0)
    out = cos.copy()
    theta_t = (math.pi - m2) / m1
    for i, y in enumerate(labels):
        theta = math.acos(cos[i, y])
        if m1 * theta + m2 <= math.pi:
            t = math.cos(m1 * theta + m2)
        else:
            t = cos[i, y] - (1 + math.cos(theta_t))
        out[i, y] = t - m3
    return s * out


@pytest.mark.parametrize("margin", ["arcface", "cosface", "sphereface", "combined"])
def test_matches_numpy_reference(margin):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 16)).astype(np.float32)
    labels = rng.integers(0, 10, 64)
    head = MarginHead(10, margin)
    head.build((None, 16))
    w = head.centres.numpy()
    # Push some rows towards their centre and some against it, so both branches (and the fallback) run.
    x[:16] = w[labels[:16]] * 50 + 0.01 * x[:16]
    x[16:32] = -w[labels[16:32]] * 50 + 0.01 * x[16:32]
    got = head(x, labels).numpy()
    p = margin_params(margin)
    want = np_logits(x.astype(np.float64), w.astype(np.float64), labels, p["s"], p["m1"], p["m2"], p["m3"])
    # Rows 0-15 sit at cos(theta) ~ 1 - 1e-8, where float32 resolves sin(theta) = sqrt(1 - cos^2) only to
    # ~sqrt(float32 eps) ~ 3e-4 (and cos is clipped at 1 - 1e-7), so they get that absolute tolerance.
    np.testing.assert_allclose(got[:16], want[:16], atol=4e-4 * p["s"], rtol=1e-4)
    np.testing.assert_allclose(got[16:], want[16:], atol=2e-3 * p["s"] / 64 + 1e-4, rtol=1e-4)
    # Without labels: plain s*cos.
    np.testing.assert_allclose(head(x).numpy(), np_logits(x, w, [], p["s"], 1, 0, 0), atol=1e-4)
    if p["m2"] > 0 or p["m1"] > 1:  # the rows opposite their centre did exercise the fallback branch
        cos = head.cosine(x).numpy()[np.arange(16, 32), labels[16:32]]
        assert np.all(cos < math.cos((math.pi - p["m2"]) / p["m1"]))


def test_presets_are_the_papers():
    assert MARGINS["arcface"] == (1.0, 0.5, 0.0, 64.0)  # ArcFace s=64, m=0.5 (MobiFace's loss)
    assert MARGINS["cosface"][2] == 0.35
    assert margin_params("arcface", m2=0.3)["m2"] == 0.3
    with pytest.raises(ValueError, match="unknown margin 'arc'"):
        margin_params("arc")


def insightface_arcface(cos, m):
    """InsightFace's ArcFace target logit with easy_margin off, as its training code writes it (not ours):
    th = cos(pi - m), mm = sin(pi - m) * m; phi = cos(theta + m) where cos > th, else cos - mm."""
    cos = np.asarray(cos, np.float64)
    sin = np.sqrt(np.clip(1.0 - cos * cos, 0.0, 1.0))
    th, mm = math.cos(math.pi - m), math.sin(math.pi - m) * m
    return np.where(cos > th, cos * math.cos(m) - sin * math.sin(m), cos - mm)


@pytest.mark.parametrize("m, offset_gap", [(0.5, 0.239713 - 0.122417), (0.3, 0.088656 - 0.044664)])
def test_fallback_against_insightface(m, offset_gap):
    """Against InsightFace's formula (above): identical up to theta_t = pi - m (the same switch point), and in
    the fallback region both are `cos - constant`, ours lower by 1 - cos(m) instead of m*sin(m), i.e. higher
    by the hand-computed gap (m = 0.5: 0.239713 - 0.122417; m = 0.3: 0.088656 - 0.044664). At theta_t
    ours equals the paper's cos(theta_t + m) = cos(pi) = -1 (continuous)."""
    cos = np.linspace(-1 + 1e-6, 1 - 1e-6, 4001)
    ours = target_logit(tf.constant(cos, tf.float32), 1.0, m, 0.0).numpy().astype(np.float64)
    ref = insightface_arcface(cos, m)
    th = math.cos(math.pi - m)
    main, fall = cos > th + 1e-4, cos < th - 1e-4
    assert main.sum() > 1000 and fall.sum() > 50
    np.testing.assert_allclose(ours[main], ref[main], atol=2e-3)  # float32 sin near cos = +-1
    np.testing.assert_allclose(ours[fall] - ref[fall], offset_gap, atol=1e-5)
    at = target_logit(tf.constant([th], tf.float32), 1.0, m, 0.0).numpy()[0]
    assert at == pytest.approx(-1.0, abs=1e-4)


@pytest.mark.parametrize("m1,m2", [(1.0, 0.5), (1.35, 0.0), (1.0, 0.3), (2.0, 0.2)])
def test_fallback_is_continuous_and_monotone(m1, m2):
    cos = tf.constant(np.linspace(-1, 1, 20001), tf.float32)
    t = target_logit(cos, m1, m2, 0.0).numpy()
    # Monotone increasing in cos (= decreasing in theta) everywhere, no jump bigger than the grid step allows.
    assert np.all(np.diff(t) >= -1e-6), "target logit must not get larger as the angle grows"
    assert np.max(np.abs(np.diff(t))) < 0.05
    assert t[-1] > t[0]


@pytest.mark.parametrize("margin", ["arcface", "cosface", "sphereface", "combined", "softmax"])
def test_gradients_finite_at_cos_plus_minus_one(margin):
    head = MarginHead(4, margin)
    head.build((None, 8))
    w = head.centres.numpy()
    # cos = +1 exactly (embedding == its centre) and cos = -1 exactly (embedding == -centre).
    x = tf.constant(np.stack([w[0], -w[1], w[2] * 3, -w[3] * 7]), tf.float32)
    labels = tf.constant([0, 1, 2, 3])
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = head(x, labels)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
    gx, gw = tape.gradient(loss, [x, head.centres])
    assert np.isfinite(loss.numpy())
    assert np.all(np.isfinite(gx.numpy())) and np.all(np.isfinite(gw.numpy()))


def test_float32_under_mixed_precision():
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        head = MarginHead(5, "arcface")
        x = tf.constant(np.random.default_rng(1).normal(size=(3, 8)), tf.float16)
        out = head(x, tf.constant([0, 1, 2]))
        assert out.dtype == tf.float32 and head.centres.dtype == "float32"
        assert np.all(np.isfinite(out.numpy()))
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def test_softmax_is_plain_linear():
    head = MarginHead(3, "softmax")
    x = np.random.default_rng(2).normal(size=(4, 6)).astype(np.float32)
    out = head(x, tf.constant([0, 1, 2, 0])).numpy()
    np.testing.assert_allclose(out, x @ head.centres.numpy().T + head.bias.numpy(), atol=1e-5)


def test_learns_a_separable_toy_problem():
    """100 SGD steps on fixed 16-d embeddings in 10 clusters: the ArcFace centres must classify them.

    16-d, not 2-d: on a circle a centre cannot get past another class's direction, and 2-d toys have
    wrong-permutation local minima that say nothing about the head.
    """
    keras.utils.set_random_seed(0)  # the centres' init must not depend on what ran before
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(10, 16)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    y = rng.integers(0, 10, 500)
    x = tf.constant(centres[y] + 0.1 * rng.normal(size=(500, 16)).astype(np.float32))
    head = MarginHead(10, "arcface", s=16, m2=0.2)
    head.build((None, 16))
    opt = keras.optimizers.SGD(0.1, momentum=0.9)
    for _ in range(100):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, head(x, y)))
        opt.apply(tape.gradient(loss, head.trainable_variables), head.trainable_variables)
    acc = np.mean(np.argmax(head(x).numpy(), 1) == y)
    assert acc > 0.98, acc
