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


def build_parts(cfg, strategy, schedule, num_classes: int, teacher_dim: int, init_from: str | None = None) -> Parts:
    """Backbone, margin head (num_classes centres), projection (to teacher_dim when distilling into another
    size), optimizer (slots created now) and step counter, all under `strategy.scope()`. With `init_from` (an
    embedding .keras) the backbone starts from its weights (`load_init_weights`); the margin head starts fresh."""
    with strategy.scope():
        net = build_backbone(cfg.backbone, cfg.embedding_dim, cfg.head, cfg.sync_bn)
        if cfg.fused_bn:
            from mobiface_tf.training.fused_bn import fuse_batchnorm

            fuse_batchnorm(net)
        if init_from:
            load_init_weights(net, init_from, f"--backbone={cfg.backbone} --head={cfg.head} "
                                              f"--embedding_dim={cfg.embedding_dim}")
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


EMBEDDING_HEAD_PREFIX = "embedding_"  # models.layers.embedding_head names its layers embedding_*


def _weighted_layers(model) -> list:
    """[(layer name, [weight shapes])] of every layer with weights, in the model's order."""
    return [(layer.name, [tuple(w.shape) for w in layer.weights]) for layer in model.layers if layer.weights]


def load_init_weights(net, path, network: str) -> None:
    """Copy the weights of the embedding model saved at `path` (.keras) into `net`, exactly.

    The two must be the same architecture: the same layers with weights, in order, of the same shapes. Otherwise
    ValueError, one line naming the first differing layer with both shapes, and `network` (the flags that made
    `net`); nothing is copied."""
    import zipfile

    try:
        src = keras.models.load_model(path, compile=False)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"--init_from={str(path)!r} is not a readable Keras model ({' '.join(str(e).split())[:200]})"
                         ) from None
    mine, theirs = _weighted_layers(net), _weighted_layers(src)
    for i in range(max(len(mine), len(theirs))):
        a = mine[i] if i < len(mine) else ("(none)", [])
        b = theirs[i] if i < len(theirs) else ("(none)", [])
        if a[1] != b[1]:
            raise ValueError(f"--init_from={str(path)!r} does not fit {network}: weighted layer {i} is {b[0]!r} "
                             f"{b[1]} in the file and {a[0]!r} {a[1]} here. Use the flags the file was made with")
    for layer, src_layer in zip([x for x in net.layers if x.weights], [x for x in src.layers if x.weights]):
        layer.set_weights(src_layer.get_weights())


def body_layers(net) -> list:
    """The body: every layer with weights but the embedding head (GDC / linear conv / dense and its BN)."""
    return [layer for layer in net.layers if layer.weights and not layer.name.startswith(EMBEDDING_HEAD_PREFIX)]


def set_body_frozen(net, frozen: bool) -> None:
    """Freeze (or unfreeze) the body: frozen layers get no gradient, and their BN runs in inference mode, so
    neither weights nor BN statistics change. Takes effect in train steps traced afterwards."""
    for layer in body_layers(net):
        layer.trainable = not frozen
