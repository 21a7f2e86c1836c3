"""The objects a run trains, built under the strategy's scope: the backbone (embedding network), the margin
head, the distillation projection, the SGD optimizer and the step counter.
"""
from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from mobiface_tf import models
from mobiface_tf.heads import MarginHead
from mobiface_tf.models.zoo import resolve as resolve_network
from mobiface_tf.training.config import NO_MARGIN


def build_backbone(backbone: str, embedding_dim: int, head: str | None, sync_bn: bool = False):
    """The network named `backbone` (a zoo or builder name, resolved by models.zoo.resolve) with `head` and
    `embedding_dim` (None: the network's own); optional synchronised BN. ValueError for an unknown name or a
    head that contradicts a zoo name. Every builder honours `head` (MobileFaceNet's own is "gdc").

    Synchronised BN (mean / variance all-reduced over replicas) makes a MirroredStrategy step equal to a
    one-device step on the same global batch; without it each replica normalises with its own batch.
    """
    builder, kwargs = resolve_network(backbone, head, embedding_dim)
    model = models.build(builder, **kwargs)
    if sync_bn:
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.synchronized = True
    return model


def make_optimizer(lr_schedule, momentum: float, mixed_precision: str = "none", nesterov: bool = False):
    """SGD with momentum; fp16 wraps it in dynamic loss scaling (bf16 has fp32's range and needs none)."""
    opt = keras.optimizers.SGD(learning_rate=lr_schedule, momentum=momentum, nesterov=nesterov)
    if mixed_precision == "mixed_float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


def current_lr(optimizer) -> float:
    """The optimizer's learning rate at its current iteration, as a float (inside a LossScaleOptimizer too)."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return float(inner.learning_rate.numpy()) if hasattr(inner.learning_rate, "numpy") else float(inner.learning_rate)


@dataclasses.dataclass
class Parts:
    """What one run trains and checkpoints. `head` is None with --margin=none; `projection` is None unless the
    student's and the teacher's embedding sizes differ."""
    backbone: keras.Model
    head: MarginHead | None
    projection: keras.layers.Dense | None
    optimizer: keras.optimizers.Optimizer
    step: tf.Variable

    def trainable_variables(self) -> list:
        """Every variable the optimizer updates: backbone, then margin head, then projection."""
        out = list(self.backbone.trainable_variables)
        for extra in (self.head, self.projection):
            if extra is not None:
                out += extra.trainable_variables
        return out

    def all_variables(self) -> list:
        """Every variable a checkpoint holds (weights, BN statistics, optimizer slots): the NaN guard checks these."""
        out = list(self.backbone.variables) + list(self.optimizer.variables)
        for extra in (self.head, self.projection):
            if extra is not None:
                out += extra.variables
        return out

    def checkpointables(self) -> dict:
        """{name: object} for tf.train.Checkpoint (the names are the checkpoint's; keep them stable)."""
        out = dict(backbone=self.backbone, optimizer=self.optimizer, step=self.step)
        if self.head is not None:
            out["head"] = self.head
        if self.projection is not None:
            out["projection"] = self.projection
        return out


def build_parts(cfg, strategy, schedule, num_classes: int, teacher_dim: int) -> Parts:
    """Backbone, margin head (num_classes centres), projection (to teacher_dim when distilling into another
    size), optimizer (slots created now) and step counter, all under `strategy.scope()`."""
    with strategy.scope():
        net = build_backbone(cfg.backbone, cfg.embedding_dim, cfg.head, cfg.sync_bn)
        head = None
        if cfg.margin != NO_MARGIN:
            head = MarginHead(num_classes, cfg.margin, cfg.margin_s, cfg.margin_m1, cfg.margin_m2, cfg.margin_m3)
            head.build((None, cfg.embedding_dim))
        projection = None
        if cfg.distill_weight > 0 and teacher_dim != cfg.embedding_dim:
            # Student and teacher sizes differ: a trained linear map to the teacher's space (not exported).
            projection = keras.layers.Dense(teacher_dim, use_bias=False, dtype="float32", name="distill_projection")
            projection.build((None, cfg.embedding_dim))
        optimizer = make_optimizer(schedule, cfg.momentum, cfg.mixed_precision, cfg.nesterov)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        parts = Parts(net, head, projection, optimizer, step)
        # Keras issue 23085: create the optimizer's slots inside the scope, before the first (traced) step.
        optimizer.build(parts.trainable_variables())
    return parts
