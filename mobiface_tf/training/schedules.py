"""Learning-rate schedules and the weight-decay variable selection.

The paper's recipe (MobiFace §IV-A, InsightFace conventions): SGD momentum 0.9, global batch 1024, lr 0.1
divided by 10 at 40K, 60K and 80K steps, stop at 100K, weight decay 5e-4.

Weight decay is *coupled L2*: 0.5 * wd * |w|^2 is added to the loss (mobiface_tf.training.step), so the gradient
gets + wd * w and goes through momentum and the lr schedule, exactly as `weight_decay` in MXNet / PyTorch SGD
that InsightFace (and the paper's 5e-4) use. Decoupled decay (AdamW-style w -= wd * w outside the gradient)
would be a different regulariser: with SGD + momentum its effective strength differs by the factor
lr / (1 - momentum), and it would not follow the lr drops, so 5e-4 only means the paper's setting when coupled.
It applies to conv / dense kernels and the class centres, not to BN or PReLU parameters.
"""
from __future__ import annotations

import math

import keras
import tensorflow as tf


class PiecewiseWithWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """lr * decay^(number of boundaries passed), after an optional linear warmup from lr/warmup_steps.

    The paper: lr 0.1, x0.1 at 40K, 60K, 80K iterations (PiecewiseWithWarmup(0.1, [40000, 60000, 80000])).
    """

    def __init__(self, lr: float, boundaries=(), decay: float = 0.1, warmup_steps: int = 0):
        if lr <= 0:
            raise ValueError(f"--lr must be > 0, got {lr} (the paper uses 0.1 at batch 1024)")
        if list(boundaries) != sorted(boundaries) or any(b <= 0 for b in boundaries):
            raise ValueError(f"--lr_boundaries must be increasing positive steps, got {list(boundaries)}")
        self.lr, self.boundaries, self.decay, self.warmup_steps = float(lr), list(boundaries), float(decay), \
            int(warmup_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        passed = tf.add_n([tf.cast(step >= b, tf.float32) for b in self.boundaries] + [tf.constant(0.0)])
        lr = self.lr * tf.pow(self.decay, passed)
        if self.warmup_steps > 0:
            lr = lr * tf.minimum(1.0, (step + 1.0) / self.warmup_steps)
        return lr

    def get_config(self):
        return dict(lr=self.lr, boundaries=self.boundaries, decay=self.decay, warmup_steps=self.warmup_steps)


class CosineWithWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """lr * 0.5 * (1 + cos(pi * step / total_steps)) after an optional linear warmup (SGDR without restarts,
    Loshchilov & Hutter, 2017); reaches 0 at total_steps."""

    def __init__(self, lr: float, total_steps: int, warmup_steps: int = 0):
        if lr <= 0:
            raise ValueError(f"--lr must be > 0, got {lr}")
        self.lr, self.total_steps, self.warmup_steps = float(lr), int(total_steps), int(warmup_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        frac = tf.minimum(step / float(max(self.total_steps, 1)), 1.0)
        lr = self.lr * 0.5 * (1.0 + tf.cos(math.pi * frac))
        if self.warmup_steps > 0:
            lr = lr * tf.minimum(1.0, (step + 1.0) / self.warmup_steps)
        return lr

    def get_config(self):
        return dict(lr=self.lr, total_steps=self.total_steps, warmup_steps=self.warmup_steps)


def make_schedule(cfg):
    """The learning-rate schedule a TrainConfig asks for: CosineWithWarmup, or PiecewiseWithWarmup (the paper's).

    ValueError for lr <= 0 or boundaries that are not increasing positive steps."""
    if cfg.lr_schedule == "cosine":
        return CosineWithWarmup(cfg.lr, cfg.steps, cfg.warmup_steps)
    return PiecewiseWithWarmup(cfg.lr, cfg.lr_boundaries, cfg.lr_decay, cfg.warmup_steps)


def decayed_variables(variables) -> list:
    """Conv / depthwise / dense kernels and class centres get weight decay; BN and PReLU parameters do not."""
    return [v for v in variables if v.path.split("/")[-1] in ("kernel", "depthwise_kernel", "centres")]

