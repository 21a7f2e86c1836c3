"""Margin heads for face-recognition training: ArcFace, CosFace, SphereFace-style and plain softmax.

All angular heads share one formula, InsightFace's combined margin (Deng et al., "ArcFace", CVPR 2019, Eq. 4):

    logit_j = s * cos(theta_j)                                 for every class j != y
    logit_y = s * (cos(m1 * theta_y + m2) - m3)                for the true class y

where cos(theta_j) = <x / |x|, W_j / |W_j|> between the embedding x and the class centre W_j.

    margin       m1    m2    m3    s     reference
    arcface      1.0   0.5   0.0   64    ArcFace (additive angular margin), the MobiFace paper's loss
    cosface      1.0   0.0   0.35  64    CosFace / AM-softmax (additive cosine margin)
    sphereface   1.35  0.0   0.0   64    SphereFace-style multiplicative angle margin, ArcFace paper Table 2
    combined     1.0   0.3   0.2   64    ArcFace paper's combined margin "CM1 (1, 0.3, 0.2)"
    softmax      -     -     -     -     plain linear classifier W x + b (no normalisation, no margin)

Numerics (why it never produces NaN gradients):
  * cos(theta) is clipped to [-1 + EPS, 1 - EPS]. d/dc arccos(c) = -1/sqrt(1 - c^2) is infinite at c = +-1.
  * For m1 == 1 no arccos is taken at all: cos(theta + m2) = cos(theta) cos(m2) - sin(theta) sin(m2) with
    sin(theta) = sqrt(max(1 - cos^2, EPS)) (theta in [0, pi] so sin >= 0). Only m1 != 1 uses arccos.
  * Fallback when m1*theta + m2 > pi. cos(.) stops decreasing past pi, so the "penalised" target logit would
    *grow* as the angle gets worse and training can collapse. Like InsightFace's ArcFace with easy_margin off
    (`where(cos > cos(pi - m), cos(theta + m), cos - m*sin(m))`), we switch to a margin on the cosine itself
    beyond the threshold theta_t = (pi - m2) / m1:
        target = cos(theta) - (1 + cos(theta_t))                        when theta > theta_t
    The offset 1 + cos(theta_t) is chosen so the target is *continuous* at theta_t (it equals -1 there), and
    it stays monotone decreasing in theta. (InsightFace's offset m*sin(m) leaves a small jump at theta_t;
    for ArcFace m = 0.5 the two offsets are 0.240 vs 0.122, both far below the logit scale.) The m3 term is
    subtracted after either branch.
  * The layer computes in float32 even under a mixed_float16 / mixed_bfloat16 policy: with s = 64 the logits
    reach 64 and exp(64) overflows float16; the inputs are cast to float32 first.
"""
from __future__ import annotations

import math

import keras
import tensorflow as tf

EPS = 1e-7  # clip margin for cos(theta); float32 resolves 1 - 1e-7

#           m1     m2    m3    s
MARGINS = {
    "arcface":    (1.0,  0.5,  0.0,  64.0),
    "cosface":    (1.0,  0.0,  0.35, 64.0),
    "sphereface": (1.35, 0.0,  0.0,  64.0),
    "combined":   (1.0,  0.3,  0.2,  64.0),
    "softmax":    None,  # plain linear classifier
}


def margin_params(margin: str, s=None, m1=None, m2=None, m3=None) -> dict:
    """Preset (m1, m2, m3, s) for a margin name, with any given value overriding the preset."""
    if margin not in MARGINS:
        raise ValueError(f"unknown margin {margin!r}; expected one of {sorted(MARGINS)}")
    if margin == "softmax":
        return dict(kind="softmax")
    d_m1, d_m2, d_m3, d_s = MARGINS[margin]
    p = dict(kind="angular", s=d_s if s is None else float(s), m1=d_m1 if m1 is None else float(m1),
             m2=d_m2 if m2 is None else float(m2), m3=d_m3 if m3 is None else float(m3))
    if p["s"] <= 0:
        raise ValueError(f"margin scale s must be > 0, got {p['s']}")
    if p["m1"] < 1 or p["m2"] < 0 or p["m2"] >= math.pi or p["m3"] < 0:
        raise ValueError(f"need m1 >= 1, 0 <= m2 < pi, m3 >= 0; got m1={p['m1']}, m2={p['m2']}, m3={p['m3']}")
    return p


def target_logit(cos, m1: float, m2: float, m3: float):
    """cos(m1*theta + m2) - m3 with the clipping and the continuous fallback described in the module doc.

    Works on any float32 tensor of cosines; returns the unscaled target logit.
    """
    cos = tf.clip_by_value(cos, -1.0 + EPS, 1.0 - EPS)
    theta_t = (math.pi - m2) / m1  # beyond this angle cos(m1*theta + m2) would turn back up
    if m1 == 1.0:
        sin = tf.sqrt(tf.maximum(1.0 - cos * cos, EPS))
        marg = cos * math.cos(m2) - sin * math.sin(m2)
    else:
        marg = tf.cos(m1 * tf.acos(cos) + m2)
    if theta_t < math.pi:
        # theta > theta_t  <=>  cos(theta) < cos(theta_t), as cos decreases on [0, pi].
        fallback = cos - (1.0 + math.cos(theta_t))
        marg = tf.where(cos < math.cos(theta_t), fallback, marg)
    return marg - m3


class MarginHead(keras.layers.Layer):
    """Class centres W [num_classes, embedding_dim] and margin logits, always in float32.

    call(embeddings, labels=None):
      embeddings [B, D] (any float dtype), labels int [B] or None.
      With labels: [B, C] logits with the margin applied to each row's true class (train time).
      Without labels: s * cos(theta) (or W x + b for "softmax"), i.e. no margin (for accuracy / inference).
    """

    def __init__(self, num_classes: int, margin: str = "arcface", s=None, m1=None, m2=None, m3=None,
                 name: str = "margin_head", **kwargs):
        kwargs.pop("dtype", None)
        super().__init__(name=name, dtype="float32", **kwargs)  # float32 even under a mixed policy
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.num_classes = int(num_classes)
        self.margin = margin
        self.params = margin_params(margin, s, m1, m2, m3)
        self._given = dict(s=s, m1=m1, m2=m2, m3=m3)

    def build(self, input_shape):
        dim = int(input_shape[-1])
        # Centres start at unit expected norm, N(0, 1/dim). Their scale does not change the logits (they are
        # normalised) but it does change SGD: the gradient on a direction scales as 1/|w|, so with InsightFace's
        # N(0, 0.01) the first steps jump by ~100x the lr. Measured on toy problems (fixed embeddings, SGD 0.1,
        # momentum 0.9, 10 seeds): 16-d / 10 classes, 100 steps: N(0, 0.01) reached 0.97-1.0, unit norm 1.0 on
        # every seed; 2-d / 3 classes, 200 steps: 3 of 10 seeds stayed below 0.9 with N(0, 0.01), none with
        # unit norm for the same draws.
        self.centres = self.add_weight(name="centres", shape=(self.num_classes, dim),
                                       initializer=keras.initializers.RandomNormal(stddev=dim ** -0.5),
                                       trainable=True)
        if self.params["kind"] == "softmax":
            self.bias = self.add_weight(name="bias", shape=(self.num_classes,), initializer="zeros")

    def cosine(self, embeddings):
        """cos(theta) [B, C] between L2-normalised embeddings and L2-normalised centres."""
        x = tf.math.l2_normalize(tf.cast(embeddings, tf.float32), axis=1, epsilon=1e-12)
        w = tf.math.l2_normalize(tf.cast(self.centres, tf.float32), axis=1, epsilon=1e-12)
        return tf.matmul(x, w, transpose_b=True)

    def call(self, embeddings, labels=None):
        if self.params["kind"] == "softmax":
            return tf.matmul(tf.cast(embeddings, tf.float32), self.centres, transpose_b=True) + self.bias
        p = self.params
        cos = self.cosine(embeddings)
        if labels is None:
            return p["s"] * cos
        labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
        idx = tf.stack([tf.range(tf.shape(labels)[0]), labels], axis=1)
        target = target_logit(tf.gather_nd(cos, idx), p["m1"], p["m2"], p["m3"])
        logits = tf.tensor_scatter_nd_update(cos, idx, target)
        return p["s"] * logits

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "margin": self.margin, **self._given}
