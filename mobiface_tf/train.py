"""The trainer: tf.data -> backbone -> margin head -> SGD, in a custom loop under tf.distribute.

    python -m mobiface_tf.train --flagfile=configs/train.flags [--model_dir=DIR] [...]

The paper's recipe (MobiFace §IV-A, InsightFace conventions): SGD momentum 0.9, global batch 1024, lr 0.1
divided by 10 at 40K, 60K and 80K steps, stop at 100K, weight decay 5e-4, ArcFace head s = 64, m = 0.5.

Why a custom loop: Keras 3 `fit` under MultiWorkerMirroredStrategy failed in a probe, while `strategy.run`
inside a tf.function works on one device, several GPUs (MirroredStrategy) and several workers (TF_CONFIG).

Weight decay is *coupled L2*: 0.5 * wd * |w|^2 is added to the loss, so the gradient gets + wd * w and goes
through momentum and the lr schedule, exactly as `weight_decay` in MXNet / PyTorch SGD that InsightFace (and
the paper's 5e-4) use. Decoupled decay (AdamW-style w -= wd * w) would be a different regulariser: with SGD +
momentum the two differ by the 1 / (lr * (1 - momentum)) factor, so 5e-4 only means the paper's setting when
coupled. It applies to conv / dense kernels and the class centres, not to BN or PReLU parameters.

Knowledge distillation (Hinton et al., 2015, applied to embeddings as in EdgeFace / Keras_insightface):
with --distill_weight=lambda > 0 the loss gains lambda * (1 - cos(student, teacher)) (--distill_loss=cosine) or
lambda * |normalise(student) - teacher|^2 averaged over dimensions (mse). The teacher's embeddings of each crop
and of its mirror are stored in the shards (tools/prepare_data.py --teacher), so the teacher never runs during
training. When the student's and the teacher's embedding sizes differ, a trained linear projection (not part
of the exported model) maps the student's embedding to the teacher's size. --margin=none trains on
distillation alone, so unlabelled faces work.

Settings: every training setting is a field of `TrainConfig` (one definition: the absl flags are generated
from its fields and validated once in `TrainConfig.validate`). Layout: library functions first (schedule,
strategy, model, step, loop) taking plain arguments, so tests call them without flags; flags and `main` at
the bottom.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # before TensorFlow is imported: its start-up log is filtered unless --verbose
    import sys

    from mobiface_tf import quiet

    quiet.install(sys.argv)

import keras
import numpy as np
import tensorflow as tf

from mobiface_tf import models
from mobiface_tf.heads import MARGINS, MarginHead, margin_params
from mobiface_tf.models.zoo import CONFIGS as NETWORKS, resolve as resolve_network
from mobiface_tf.sidecar import drop_stale_sidecar

log = logging.getLogger("mobiface_tf.train")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
PRECISIONS = ("none", "mixed_float16", "mixed_bfloat16")
SCHEDULES = ("piecewise", "cosine")
DISTILL_LOSSES = ("cosine", "mse")
NO_MARGIN = "none"
EMBEDDING_FILE = "embedding.keras"
CONFIG_FILE = "config.json"  # the settings the checkpoints were made with (compared on resume)
VAL_HISTORY = "val_history.jsonl"  # one line per held-out evaluation: step, seconds, accuracy (learning curve)


def scalar_summary(tag: str, value: float, step: int):
    """A TensorBoard scalar written with TF's own summary op (tf.summary.scalar needs the tensorboard
    package, which training does not otherwise need). The metadata marks it for TensorBoard's scalars plugin,
    as tf.summary.scalar would."""
    from tensorflow.core.framework import summary_pb2

    meta = summary_pb2.SummaryMetadata()
    meta.plugin_data.plugin_name = "scalars"
    tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=meta.SerializeToString())


class TrainingDiverged(RuntimeError):
    """The loss became NaN or Inf; training stopped and the last good checkpoint was kept."""


class TrainingInterrupted(RuntimeError):
    """SIGINT (Ctrl-C) or SIGTERM: a checkpoint of the current step was saved, and training stopped."""


# ============================================================================ learning-rate schedule
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


# ============================================================================ strategy
def make_strategy(name: str = "auto") -> tf.distribute.Strategy:
    """auto: multi_worker when TF_CONFIG names >1 worker, mirrored with >1 GPU, else one device (GPU:0 or CPU)."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown --strategy {name!r}; expected one of {STRATEGIES}")
    if name == "auto":
        cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
        if sum(len(v) for v in cluster.values()) > 1:
            name = "multi_worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "one_device"
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                             "(cluster + task); see the README's multi-worker section")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")


def _id_in_cluster(resolver) -> int:
    """0 for the chief (or worker 0 when the cluster has no "chief" job), then the workers in order."""
    jobs = resolver.cluster_spec().as_dict() if resolver is not None else {}
    if resolver is None or not resolver.task_type:
        return 0
    if resolver.task_type == "chief":
        return 0
    return int(resolver.task_id) + (1 if "chief" in jobs else 0)


def is_chief(strategy) -> bool:
    """The chief (or worker 0 when there is no chief job; or the only process) writes checkpoints, summaries
    and the final model. With a "chief" job in TF_CONFIG, worker 0 is an ordinary worker."""
    return _id_in_cluster(getattr(strategy, "cluster_resolver", None)) == 0


# ============================================================================ model
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


def decayed_variables(variables) -> list:
    """Conv / depthwise / dense kernels and class centres get weight decay; BN and PReLU parameters do not."""
    return [v for v in variables if v.path.split("/")[-1] in ("kernel", "depthwise_kernel", "centres")]


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


# ============================================================================ one step
def _skip_together(grads):
    """fp16 loss scaling: if any replica's gradients overflowed, make every replica's gradients NaN.

    Keras' LossScaleOptimizer decides "finite or skip" from gradients it assumes were already all-reduced,
    but Keras 3 all-reduces later, inside the inner optimizer. Without this, an overflow on replica 1 alone
    would be applied (and summed into NaN weights), and workers could take different branches and hang.
    """
    bad = tf.add_n([tf.reduce_sum(tf.cast(tf.logical_not(tf.math.is_finite(g)), tf.float32)) for g in grads])
    bad = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, bad)
    poison = tf.where(bad > 0, float("nan"), 0.0)
    return [g + tf.cast(poison, g.dtype) for g in grads]


def distillation_loss(student, teacher, kind: str = "cosine", projection=None):
    """Per-example distillation loss [B] between student embeddings [B, Ds] and unit teacher embeddings [B, Dt].

    cosine: 1 - cos(student, teacher); mse: mean over dimensions of (normalise(student) - teacher)^2.
    `projection` (a Dense Ds -> Dt, or None when Ds == Dt) maps the student first.
    """
    s = tf.cast(student, tf.float32)
    if projection is not None:
        s = projection(s)
    s = tf.math.l2_normalize(s, axis=1, epsilon=1e-12)
    t = tf.math.l2_normalize(tf.cast(teacher, tf.float32), axis=1, epsilon=1e-12)
    if kind == "cosine":
        return 1.0 - tf.reduce_sum(s * t, axis=1)
    if kind == "mse":
        return tf.reduce_mean(tf.square(s - t), axis=1)
    raise ValueError(f"unknown --distill_loss {kind!r}; expected one of {DISTILL_LOSSES}")


def make_train_step(strategy, backbone, head, optimizer, weight_decay: float, global_batch: int,
                    distill_weight: float = 0.0, distill_loss_kind: str = "cosine", projection=None):
    """A tf.function(iterator) -> (mean CE loss, L2 term, correct count, mean distillation loss) summed over
    replicas, one SGD step.

    `head` is the margin head, or None for distillation alone (then the CE and accuracy are 0). With
    distill_weight > 0 the iterator yields (images, labels, teacher embeddings) and the loss gains
    distill_weight * the mean distillation loss.

    `iterator` yields this worker's batch (global_batch / workers images); each local replica takes its
    contiguous slice, so one device and N mirrored devices see exactly the same global batch. (A plain
    tf.data iterator, unlike tf.distribute's distributed iterators, can be saved in a checkpoint: exact resume.)

    Per replica the CE sum is divided by the GLOBAL batch, so the SUM-reduce over replicas is the global mean
    and the gradients all-reduced by the optimizer match a one-device step on the whole batch.
    """
    variables = backbone.trainable_variables
    if head is not None:
        variables = variables + head.trainable_variables
    if projection is not None:
        variables = variables + projection.trainable_variables
    decayed = decayed_variables(variables)
    replicas = strategy.num_replicas_in_sync
    local = len(strategy.extended.worker_devices)
    per_replica = global_batch // replicas
    distill = distill_weight > 0

    def step_fn(images, labels, teacher=None):
        with tf.GradientTape() as tape:
            emb = backbone(images, training=True)
            zero = tf.constant(0.0, tf.float32)
            loss = zero
            if head is not None:
                logits = head(emb, labels)
                ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
                loss = tf.reduce_sum(ce) / global_batch
            kd = zero
            if distill:
                kd = tf.reduce_sum(distillation_loss(emb, teacher, distill_loss_kind, projection)) / global_batch
            l2 = 0.5 * weight_decay * tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in decayed])
            total = loss + distill_weight * kd + l2 / replicas
            scaled = optimizer.scale_loss(total)  # identity unless LossScaleOptimizer
        # Train accuracy from the margin-free logits (argmax of cos(theta), or W x + b for softmax), read
        # before the update (tf.function keeps program order for reads and writes of the same variable).
        if head is not None:
            pred = tf.argmax(head(tf.stop_gradient(emb)), axis=1, output_type=tf.int32)
            correct = tf.reduce_sum(tf.cast(tf.equal(pred, labels), tf.float32))
        else:
            correct = zero
        grads = tape.gradient(scaled, variables)
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            grads = _skip_together(grads)
        optimizer.apply(grads, variables)
        return loss, l2 / replicas, correct, kd

    @tf.function
    def train_step(iterator):
        batch = next(iterator)

        def part(k):
            def fn(ctx):  # replica ids are worker-major, so id % local is the local index
                i = ctx.replica_id_in_sync_group % local
                return batch[k][i * per_replica:(i + 1) * per_replica]
            return strategy.experimental_distribute_values_from_function(fn)

        args = tuple(part(k) for k in range(3 if distill else 2))
        out = strategy.run(step_fn, args=args)
        return [strategy.reduce(tf.distribute.ReduceOp.SUM, t, axis=None) for t in out]

    return train_step


def worker_input_context(strategy) -> tf.distribute.InputContext:
    """Which input pipeline this worker is: workers read disjoint shards (make_dataset shards by file)."""
    local = len(strategy.extended.worker_devices)
    workers = strategy.num_replicas_in_sync // local
    worker_id = _id_in_cluster(getattr(strategy, "cluster_resolver", None)) if workers > 1 else 0
    return tf.distribute.InputContext(num_input_pipelines=workers, input_pipeline_id=worker_id,
                                      num_replicas_in_sync=strategy.num_replicas_in_sync)


# ============================================================================ evaluation while training
def _in_memory_embedder(model, batch_size: int = 64):
    """The embedder interface (mobiface_tf.embedder) over the in-memory backbone, for held-out verification."""
    from mobiface_tf.embedder import Embedder

    class InMemoryEmbedder(Embedder):
        def _forward(self, batch):
            return np.asarray(model(batch, training=False), np.float32)

    return InMemoryEmbedder(Path("<training model>"), "raw", batch_size, tuple(model.input_shape[1:]),
                            model.output_shape[-1])


def evaluate_verification(backbone, lfw_dir=None, pairs=None, bin_path=None, folds=None, flip=False) -> dict:
    """Verification accuracy on LFW-style pairs (restricted to 1-based `folds` when given) and/or a .bin,
    via mobiface_tf.evaluate."""
    from mobiface_tf import evaluate as ev

    emb = _in_memory_embedder(backbone)
    out = {}
    if lfw_dir and pairs:
        out["lfw"] = ev.evaluate_lfw(emb, pairs, lfw_dir, flip=flip, folds=folds, progress=False)[0]
    if bin_path:
        out["bin"] = ev.evaluate_bin(emb, bin_path, flip=flip, progress=False)[0]
    return out


# ============================================================================ settings
def _field(default, help: str, flag: str | None = None, **meta):
    return dataclasses.field(default=default, metadata=dict(help=help, flag=flag, **meta))


@dataclasses.dataclass
class TrainConfig:
    """Every training setting, defined once: the absl flags are generated from these fields (`define_flags`),
    `train(data, model_dir, **settings)` fills it, and `validate` checks it before any work.

    Settings marked `fixed` define the network or its objective: a resume that changes them stops with one
    line. The others (batch size, schedule, logging, ...) may change between runs of one model_dir.
    """
    data: str = _field(None, "TFRecord shards: glob or directory (manifest.json next to them gives num_classes)",
                       "string")
    model_dir: str = _field(None, "checkpoints, TensorBoard events, flags.txt and embedding.keras go here", "string")
    val_lfw_dir: str = _field(None, "held-out verification images <Name>/<Name>_NNNN.jpg (with --val_pairs)",
                              "string")
    val_pairs: str = _field(None, "LFW View 2 style pairs.txt for --val_lfw_dir", "string")
    val_folds: list = _field(None, "score --val_pairs only on these 1-based folds (the held-out LFW protocol, "
                             "e.g. 1,2,3)", "list")
    val_flip: bool = _field(False, "flip test in held-out verification (embed image + mirror)", "bool")
    val_bin: str = _field(None, "InsightFace verification .bin", "string")
    val_every: int = _field(0, "held-out verification (--val_lfw_dir/--val_pairs and/or --val_bin) every N steps and after the last "
                            "step; 0: never (then the validation flags are unused)", "integer",
                            lower_bound=0)
    backbone: str = _field("mobiface", "network: a builder name, or a zoo name (mobiface_gdc, mobilefacenet, ... in "
                           "mobiface_tf/models/zoo.py) that also sets --head and, unless given, --embedding_dim",
                           "enum", choices=sorted([*models.BUILDERS, *NETWORKS]), fixed=True)
    head: str = _field(None, "embedding head (fc = literal Table I); default: the zoo name's head, else gdc", "enum",
                       choices=["fc", "gdc", "gap"], fixed=True)
    embedding_dim: int = _field(None, "embedding size; default: the zoo name's, else 512", "integer", lower_bound=1,
                                fixed=True)
    margin: str = _field("arcface", "margin head (presets in mobiface_tf/heads.py); none: distillation alone",
                         "enum", choices=sorted([*MARGINS, NO_MARGIN]), fixed=True)
    margin_s: float = _field(None, "override the preset scale s", "float", fixed=True)
    margin_m1: float = _field(None, "override the preset multiplicative angular margin m1", "float", fixed=True)
    margin_m2: float = _field(None, "override the preset additive angular margin m2", "float", fixed=True)
    margin_m3: float = _field(None, "override the preset additive cosine margin m3", "float", fixed=True)
    distill_weight: float = _field(0.0, "knowledge distillation weight lambda (0: off); needs shards with teacher "
                                   "embeddings (tools/prepare_data.py --teacher)", "float", fixed=True)
    distill_loss: str = _field("cosine", "cosine: 1 - cos(student, teacher); mse: squared error of the normalised "
                               "embeddings", "enum", choices=list(DISTILL_LOSSES), fixed=True)
    batch_size: int = _field(1024, "GLOBAL batch size (split over replicas)", "integer", lower_bound=1)
    lr: float = _field(0.1, "base learning rate", "float")
    lr_schedule: str = _field("piecewise", "piecewise: x lr_decay at lr_boundaries (the paper); cosine: to 0 at "
                              "--steps", "enum", choices=list(SCHEDULES))
    lr_boundaries: list = _field((40000, 60000, 80000), "steps where lr is multiplied by --lr_decay (piecewise)",
                                 "list")
    lr_decay: float = _field(0.1, "lr factor at each boundary (piecewise)", "float")
    warmup_steps: int = _field(0, "linear lr warmup steps", "integer", lower_bound=0)
    steps: int = _field(100000, "total training steps", "integer", lower_bound=1)
    momentum: float = _field(0.9, "SGD momentum", "float")
    nesterov: bool = _field(False, "Nesterov momentum", "bool")
    weight_decay: float = _field(5e-4, "coupled L2 weight decay (gradient += wd * w)", "float")
    mixed_precision: str = _field("none", "compute precision (head and loss stay float32)", "enum",
                                  choices=list(PRECISIONS))
    strategy: str = _field("auto", "tf.distribute strategy (multi_worker reads TF_CONFIG)", "enum",
                           choices=list(STRATEGIES))
    sync_bn: bool = _field(False, "synchronise BN statistics across replicas", "bool")
    log_every: int = _field(20, "log line + TensorBoard scalars every N steps", "integer", lower_bound=1)
    ckpt_every: int = _field(1000, "checkpoint every N steps", "integer", lower_bound=1)
    max_to_keep: int = _field(3, "checkpoints kept", "integer", lower_bound=1)
    seed: int = _field(0, "random seed (model init, shuffling, flips)", "integer")
    deterministic: bool = _field(False, "op determinism + deterministic tf.data (slower; for exact resume)", "bool")
    shuffle_buffer: int = _field(10000, "tf.data shuffle buffer (examples)", "integer", lower_bound=1)
    skip_corrupt: bool = _field(False, "keep the readable records of a truncated/corrupt TFRecord shard (with a "
                                "warning naming it) instead of stopping with an error that names it", "bool")
    resume_from: str = _field(None, "checkpoint to resume from (e.g. MODEL_DIR/checkpoints/ckpt-6) instead of the "
                              "newest one; it must be intact and finite", "string")

    def validate(self) -> None:
        """Raises ValueError (naming the flag and what to do) for any bad setting; normalises list fields."""
        try:  # the one network resolver (models.zoo.resolve) fills what the name fixes
            _, net = resolve_network(self.backbone, self.head, self.embedding_dim)
        except ValueError as e:
            raise ValueError(f"--backbone/--head: {e}") from None
        self.head = net.get("head", "gdc")
        self.embedding_dim = net.get("embedding_dim", 512)
        if self.margin != NO_MARGIN:
            if self.margin not in MARGINS:
                raise ValueError(f"unknown --margin {self.margin!r}; expected one of {sorted([*MARGINS, NO_MARGIN])}")
            margin_params(self.margin, self.margin_s, self.margin_m1, self.margin_m2, self.margin_m3)
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"unknown --mixed_precision {self.mixed_precision!r}; expected one of {PRECISIONS}")
        if self.lr_schedule not in SCHEDULES:
            raise ValueError(f"unknown --lr_schedule {self.lr_schedule!r}; expected one of {SCHEDULES}")
        if self.distill_loss not in DISTILL_LOSSES:
            raise ValueError(f"unknown --distill_loss {self.distill_loss!r}; expected one of {DISTILL_LOSSES}")
        for name in ("batch_size", "steps", "log_every", "ckpt_every", "embedding_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ValueError(f"need --weight_decay >= 0 and 0 <= --momentum < 1, got {self.weight_decay}, "
                             f"{self.momentum}")
        if self.distill_weight < 0 or not math.isfinite(self.distill_weight):
            raise ValueError(f"--distill_weight must be a finite number >= 0, got {self.distill_weight}")
        if self.margin == NO_MARGIN and self.distill_weight <= 0:
            raise ValueError("--margin=none trains on distillation alone: give --distill_weight > 0 (e.g. 1) and "
                             "shards with teacher embeddings (tools/prepare_data.py --teacher=MODEL)")
        if bool(self.val_lfw_dir) != bool(self.val_pairs):
            raise ValueError(f"--val_lfw_dir ({self.val_lfw_dir!r}) and --val_pairs ({self.val_pairs!r}) go together")
        try:
            self.lr_boundaries = [int(b) for b in self.lr_boundaries]
            self.val_folds = [int(f) for f in self.val_folds] if self.val_folds else None
        except (TypeError, ValueError):
            raise ValueError(f"--lr_boundaries and --val_folds must be integers, got {self.lr_boundaries}, "
                             f"{self.val_folds}") from None
        if self.val_folds and not self.val_pairs:
            raise ValueError("--val_folds needs --val_pairs and --val_lfw_dir")

    def schedule(self):
        """The learning-rate schedule these settings ask for: CosineWithWarmup or PiecewiseWithWarmup (the paper's)."""
        if self.lr_schedule == "cosine":
            return CosineWithWarmup(self.lr, self.steps, self.warmup_steps)
        return PiecewiseWithWarmup(self.lr, self.lr_boundaries, self.lr_decay, self.warmup_steps)

    def fixed(self) -> dict:
        """The settings a resume may not change (they define the network or its objective)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata.get("fixed")}


def define_flags() -> None:
    """One absl flag per TrainConfig field, plus the process-level thread flags."""
    from absl import flags

    for f in dataclasses.fields(TrainConfig):
        kind, meta = f.metadata["flag"], f.metadata
        default = f.default
        kw = {}
        if "lower_bound" in meta:
            kw["lower_bound"] = meta["lower_bound"]
        if kind == "enum":
            flags.DEFINE_enum(f.name, default, meta["choices"], meta["help"])
        elif kind == "list":
            flags.DEFINE_list(f.name, [str(v) for v in default] if default else None, meta["help"])
        else:
            getattr(flags, f"DEFINE_{kind}")(f.name, default, meta["help"], **kw)
    flags.DEFINE_integer("threads", 0, "TF intra-op threads (0: TF's default)", lower_bound=0)
    flags.DEFINE_integer("inter_op_threads", 0, "TF inter-op threads (0: TF's default)", lower_bound=0)
    flags.register_validator("lr", lambda v: v > 0, message="--lr must be > 0 (the paper uses 0.1 at batch 1024)")
    flags.mark_flags_as_required(["data", "model_dir"])


_define_flags = define_flags  # the old name


def check_flagfile_paths(cfg: TrainConfig, argv) -> None:
    """ValueError with a hint when a relative path setting does not exist from the current directory but does
    from the folder of a --flagfile in `argv`: absl reads flagfile paths from where you run, not the file."""
    import glob

    flagfiles = [a.split("=", 1)[1] for a in argv if a.startswith("--flagfile=")]
    for name in ("data", "val_bin", "val_pairs", "val_lfw_dir", "resume_from"):
        value = getattr(cfg, name)
        if not value or os.path.isabs(value) or glob.glob(value) or os.path.exists(value + ".index"):
            continue
        for ff in flagfiles:
            alt = os.path.join(os.path.dirname(os.path.abspath(ff)), value)
            if glob.glob(alt) or os.path.exists(alt + ".index"):
                raise ValueError(f"--{name}={value!r} does not exist from the current directory {os.getcwd()!r}, "
                                 f"but does next to --flagfile={ff!r}: paths in a flagfile are read from where you "
                                 f"run. Run from {os.path.dirname(os.path.abspath(ff))!r}, or write --{name}={alt}")


def config_from_flags(fl) -> TrainConfig:
    """A TrainConfig filled from parsed absl flags (one attribute per field); not yet validated."""
    return TrainConfig(**{f.name: getattr(fl, f.name) for f in dataclasses.fields(TrainConfig)})


# ============================================================================ the loop
def save_embedding_model(backbone, backbone_name: str, embedding_dim: int, head: str | None, path) -> Path:
    """Save the backbone alone (raw 0-255 input) as float32 with plain BN, whatever the training precision."""
    policy = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("float32")
    try:
        clean = build_backbone(backbone_name, embedding_dim, head, sync_bn=False)
    finally:
        keras.mixed_precision.set_dtype_policy(policy)
    clean.set_weights(backbone.get_weights())
    path = Path(path)
    check_embeddings_on_probe(clean, path)
    # Written under a temp name and renamed, so a full disk never leaves a half model under the real name.
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    try:
        clean.save(tmp)
        os.replace(tmp, path)
        drop_stale_sidecar(path)  # the eval sidecar of the model this replaces (mobiface_tf.sidecar)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, f"cannot write the embedding model {str(path)!r} ({e.strerror or e}); free space "
                      "and rerun the same command: it resumes from the last checkpoint") from None
    return path


def check_embeddings_on_probe(model, path, num: int = 4) -> None:
    """Run `model` on a fixed probe batch (num images of uniform noise, 0..255, at its input size) and raise
    TrainingDiverged, naming `path`, unless every embedding is finite and non-zero."""
    shape = tuple(d or 112 for d in model.input_shape[1:])
    probe = np.random.default_rng(0).uniform(0, 255, (num, *shape)).astype(np.float32)
    emb = np.asarray(model(probe, training=False), np.float64)
    norms = np.linalg.norm(emb, axis=-1)
    if not np.isfinite(emb).all() or not (norms > 1e-12).all():
        raise TrainingDiverged(f"not writing {str(path)!r}: the trained model gives "
                               f"{'NaN/Inf' if not np.isfinite(emb).all() else 'zero'} embeddings on a probe batch. "
                               "Resume from an earlier checkpoint (--resume_from) with a lower --lr")


def train(data: str, model_dir: str, *, flags_text: str | None = None, strategy_obj=None, **settings) -> dict:
    """Train (or resume from the latest checkpoint in model_dir) to `steps`; returns a summary dict.

    `settings` are TrainConfig fields (backbone=..., batch_size=..., distill_weight=...). flags_text is
    written to model_dir/flags.txt on the first run; strategy_obj overrides `strategy` (tests).
    Raises ValueError for bad arguments or input files (message says what to do; every file is opened before
    step 1), TrainingDiverged on a NaN / Inf loss or model, TrainingInterrupted after SIGINT / SIGTERM (a
    checkpoint of that step is saved first) and OSError when a checkpoint or the model cannot be written.
    """
    from mobiface_tf.data.pipeline import match_files, read_manifest

    unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise TypeError(f"train() got unknown settings {unknown}")
    cfg = TrainConfig(data=data, model_dir=model_dir, **settings)
    cfg.validate()
    schedule = cfg.schedule()
    files = match_files(data)
    manifest = read_manifest(files[0])
    num_classes = int(manifest["num_classes"])
    teacher_dim = 0
    if cfg.distill_weight > 0:
        teacher = manifest.get("teacher")
        if not teacher:
            raise ValueError(f"--distill_weight={cfg.distill_weight} needs teacher embeddings in the shards, and "
                             f"the manifest of {data!r} has none. Add them with: python tools/prepare_data.py "
                             f"--add_teacher=MODEL --output=DIR")
        teacher_dim = int(teacher["embedding_dim"])
    if cfg.margin != NO_MARGIN and num_classes < 2:
        raise ValueError(f"--margin={cfg.margin} needs labelled data with >= 2 identities; {data!r} has "
                         f"{num_classes}. For unlabelled faces use --margin=none with --distill_weight")
    check_val_inputs(cfg)  # open held-out files before step 1, so a typo fails now, not after an hour

    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(cfg.seed)
    policy = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("float32" if cfg.mixed_precision == "none" else cfg.mixed_precision)
    # Ctrl-C / SIGTERM (a scheduler's pre-emption) finish the running step, save it, and stop with one line.
    import signal
    import threading

    received, old_handlers = [], {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old_handlers[sig] = signal.signal(sig, lambda signum, frame: received.append(signal.Signals(signum).name))
    try:
        return _train(cfg, schedule=schedule, files=files, num_classes=num_classes, teacher_dim=teacher_dim,
                      flags_text=flags_text, strategy_obj=strategy_obj, received=received)
    finally:
        keras.mixed_precision.set_dtype_policy(policy)  # the global policy is restored for the caller
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)


def _compare_settings(cfg: TrainConfig, model_dir: Path, num_classes: int, teacher_dim: int) -> dict:
    """Settings of this run that differ from those the checkpoints were made with: {name: (old, new)}.

    Raises ValueError (one line: the setting, old and new values, what to do) when a fixed setting changed.
    """
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        return {}
    old = json.loads(path.read_text())
    new = dict(dataclasses.asdict(cfg), num_classes=num_classes, teacher_dim=teacher_dim)
    for name in [*cfg.fixed(), "num_classes", "teacher_dim"]:
        if name in old and json.dumps(old[name]) != json.dumps(new[name]):
            raise ValueError(f"cannot resume {str(model_dir)!r}: --{name} was {old[name]!r} when its checkpoints were "
                             f"made and is {new[name]!r} now. Use the old value, or a new --model_dir to start afresh")
    skip = {"data", "model_dir"}
    return {k: (old.get(k), v) for k, v in new.items() if k not in skip and k in old and
            json.dumps(old[k]) != json.dumps(v)}


def check_val_inputs(cfg: TrainConfig) -> None:
    """Open every held-out file the run will read (--val_bin, --val_pairs with --val_lfw_dir) before step 1.

    Raises ValueError, one line naming the flag the user typed, for a missing or unreadable file. A .bin
    without both same and different pairs is accepted with a warning (validation then logs a rate alone).
    """
    import pickle

    from mobiface_tf.data.verification import read_bin, read_lfw_pairs

    if cfg.val_bin:
        try:
            _, issame = read_bin(cfg.val_bin)
        except (ValueError, OSError, pickle.UnpicklingError) as e:
            msg = " ".join(str(e).split()).replace("--bin=", "--val_bin=")
            raise ValueError(f"--val_bin={cfg.val_bin!r}: {msg}") from None
        if issame.all() or not issame.any():
            log.warning("--val_bin=%s holds only %s pairs: validation reports a rate, not an accuracy",
                        cfg.val_bin, "same" if issame.all() else "different")
    if cfg.val_pairs:
        try:
            read_lfw_pairs(cfg.val_pairs, cfg.val_lfw_dir)
        except (ValueError, OSError) as e:
            raise ValueError(f"--val_pairs={cfg.val_pairs!r} / --val_lfw_dir={cfg.val_lfw_dir!r}: "
                             f"{' '.join(str(e).split())}") from None


def checkpoint_problem(prefix) -> str | None:
    """None when every tensor of checkpoint `prefix` (".../ckpt-6") reads back whole and every float is
    finite; otherwise a short reason: "damaged: ..." (truncated or unreadable) or "non-finite: VAR"."""
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        for name, dtype in sorted(reader.get_variable_to_dtype_map().items()):
            if dtype == tf.variant:  # the data iterator's state: not readable as an array
                continue
            value = reader.get_tensor(name)  # reads every byte: a truncated data file fails here
            if dtype.is_floating and not np.isfinite(np.asarray(value, np.float64)).all():
                return f"non-finite: {name}"
    except Exception as e:  # TF raises OpError, IndexError ("Read less bytes") or ValueError on a broken file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return f"damaged: {type(e).__name__}: {first[:200]}"
    return None


def _checkpoints(ckpt_dir: Path) -> list[str]:
    """Checkpoint prefixes in ckpt_dir, oldest first (by step number)."""
    import re

    found = {int(m.group(1)): str(p)[:-len(".index")] for p in ckpt_dir.glob("ckpt-*.index")
             if (m := re.fullmatch(r"ckpt-(\d+)\.index", p.name))}
    return [found[k] for k in sorted(found)]


def pick_checkpoint(ckpt_dir, resume_from: str | None = None) -> str | None:
    """The checkpoint a run resumes from: `resume_from`, else the newest intact one; None for a fresh run.

    A damaged newest checkpoint (truncated by a full disk or an interrupted copy) is named in a warning and
    the newest intact one is used. A checkpoint holding NaN/Inf is refused: ValueError naming it and the
    newest finite one (pass that as --resume_from). ValueError too when no checkpoint is usable.
    """
    ckpt_dir = Path(ckpt_dir)
    if resume_from:
        problem = checkpoint_problem(resume_from)
        if problem:
            raise ValueError(f"--resume_from={resume_from!r} cannot be used ({problem}); pass an intact, finite "
                             f"checkpoint from {str(ckpt_dir)!r}")
        return str(resume_from)
    candidates = _checkpoints(ckpt_dir) if ckpt_dir.is_dir() else []
    refused = None
    for prefix in reversed(candidates):
        problem = checkpoint_problem(prefix)
        if problem is None:
            if refused:
                raise ValueError(f"checkpoint {refused[0]} holds NaN/Inf ({refused[1].split(': ', 1)[1]}), so a "
                                 f"resume would train a broken model. The newest finite checkpoint is {prefix}: "
                                 f"pass --resume_from={prefix}, or use a new --model_dir")
            return prefix
        if problem.startswith("non-finite"):
            refused = refused or (prefix, problem)
        else:
            log.warning("warning: checkpoint %s is damaged (%s); trying the one before it", prefix, problem)
    if refused:
        raise ValueError(f"checkpoint {refused[0]} holds NaN/Inf ({refused[1].split(': ', 1)[1]}) and no older "
                         f"checkpoint is finite; use a new --model_dir (and a lower --lr)")
    if candidates:
        raise ValueError(f"every checkpoint in {str(ckpt_dir)!r} is damaged ({', '.join(candidates)}); "
                         "use a new --model_dir")
    return None


def _nonfinite(variables) -> list[str]:
    return [v.path for v in variables if "float" in str(v.dtype) and not bool(tf.reduce_all(tf.math.is_finite(v)))]


def _train(cfg: TrainConfig, *, schedule, files, num_classes, teacher_dim, flags_text, strategy_obj,
           received=()) -> dict:
    from mobiface_tf.data.pipeline import make_dataset

    strat = strategy_obj or make_strategy(cfg.strategy)
    replicas = strat.num_replicas_in_sync
    if cfg.batch_size % replicas:
        raise ValueError(f"--batch_size={cfg.batch_size} is not divisible by the {replicas} replicas; "
                         f"use a multiple of {replicas}")
    chief = is_chief(strat)
    model_dir = Path(cfg.model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    latest = pick_checkpoint(model_dir / "checkpoints", cfg.resume_from)
    changed = _compare_settings(cfg, model_dir, num_classes, teacher_dim) if latest else {}
    fresh_iterator = "batch_size" in changed or "seed" in changed or "shuffle_buffer" in changed

    # ---------------------------------------------------------------- data (start it early)
    ctx = worker_input_context(strat)
    worker_batch = cfg.batch_size // ctx.num_input_pipelines
    dataset = make_dataset(files, worker_batch, training=True, seed=cfg.seed, deterministic=cfg.deterministic,
                           shuffle_buffer=cfg.shuffle_buffer, input_context=ctx, skip_corrupt=cfg.skip_corrupt,
                           teacher_dim=teacher_dim if cfg.distill_weight > 0 else 0)

    # ---------------------------------------------------------------- model, optimizer, checkpoint
    with strat.scope():
        net = build_backbone(cfg.backbone, cfg.embedding_dim, cfg.head, cfg.sync_bn)
        margin_head = None
        trainable = list(net.trainable_variables)
        if cfg.margin != NO_MARGIN:
            margin_head = MarginHead(num_classes, cfg.margin, cfg.margin_s, cfg.margin_m1, cfg.margin_m2,
                                     cfg.margin_m3)
            margin_head.build((None, cfg.embedding_dim))
            trainable += margin_head.trainable_variables
        projection = None
        if cfg.distill_weight > 0 and teacher_dim != cfg.embedding_dim:
            # Student and teacher sizes differ: a trained linear map to the teacher's space (not exported).
            projection = keras.layers.Dense(teacher_dim, use_bias=False, dtype="float32", name="distill_projection")
            projection.build((None, cfg.embedding_dim))
            trainable += projection.trainable_variables
        optimizer = make_optimizer(schedule, cfg.momentum, cfg.mixed_precision, cfg.nesterov)
        # Keras issue 23085: create the optimizer's slots inside the scope, before the first (traced) step.
        optimizer.build(trainable)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    iterator = iter(dataset)  # a plain tf.data iterator: checkpointable
    parts = dict(backbone=net, optimizer=optimizer, step=step)
    if margin_head is not None:
        parts["head"] = margin_head
    if projection is not None:
        parts["projection"] = projection
    ckpt = tf.train.Checkpoint(**parts, iterator=iterator)
    # Non-chief workers must take part in saving (variables are synchronised) but write to a scratch dir.
    ckpt_dir = model_dir / "checkpoints" if chief else model_dir / f"checkpoints_worker{strat.cluster_resolver.task_id}"
    manager = tf.train.CheckpointManager(ckpt, str(ckpt_dir), max_to_keep=cfg.max_to_keep)
    if latest:
        if fresh_iterator:
            # The saved iterator yields batches of the old size (or order): restore everything else.
            tf.train.Checkpoint(**parts).restore(latest).expect_partial()
            log.info("resumed from %s at step %d with a fresh data iterator (changed: %s)", latest,
                     int(step.numpy()), ", ".join(f"{k} {o} -> {n}" for k, (o, n) in changed.items()))
        else:
            ckpt.restore(latest).assert_existing_objects_matched()
            log.info("resumed from %s at step %d", latest, int(step.numpy()))
    if chief:
        settings = dict(dataclasses.asdict(cfg), num_classes=num_classes, teacher_dim=teacher_dim)
        if not latest:
            (model_dir / CONFIG_FILE).write_text(json.dumps(settings, indent=1, default=str) + "\n")
            if flags_text is not None:
                (model_dir / "flags.txt").write_text(flags_text)
        elif changed:
            with open(model_dir / "flags.txt", "a") as fh:
                fh.write(f"# resumed at step {int(step.numpy())} with: " +
                         " ".join(f"--{k}={n}" for k, (o, n) in changed.items()) + "\n")
    train_step = make_train_step(strat, net, margin_head, optimizer, cfg.weight_decay, cfg.batch_size,
                                 cfg.distill_weight, cfg.distill_loss, projection)
    writer = tf.summary.create_file_writer(str(model_dir / "train")) if chief else tf.summary.create_noop_writer()
    checked = list(net.variables) + list(optimizer.variables) + \
        (list(margin_head.variables) if margin_head is not None else []) + \
        (list(projection.variables) if projection is not None else [])

    def save_checkpoint(s):
        # The loss was computed before this step's update: check every variable the checkpoint holds
        # (weights, BN moving statistics, optimizer slots), so a checkpoint never holds a diverged model.
        bad = _nonfinite(checked)
        if bad:
            raise TrainingDiverged(
                f"{len(bad)} variable(s) became NaN/Inf at step {s} (e.g. {bad[0]}); stopped without saving. The "
                f"last good checkpoint is {manager.latest_checkpoint}. Lower --lr (now {lr}), add "
                f"--warmup_steps, or check the data")
        try:
            return manager.save(checkpoint_number=s)
        except (OSError, tf.errors.OpError) as e:  # a full disk, a read-only folder
            first = (str(getattr(e, "message", e)).strip().splitlines() or [type(e).__name__])[0]
            raise OSError(f"cannot write checkpoint {str(ckpt_dir / f'ckpt-{s}')!r} ({first[:200]}); free space "
                          f"and rerun the same command: it resumes from {manager.latest_checkpoint}") from None

    # ---------------------------------------------------------------- loop
    start_step = int(step.numpy())
    t_start = time.perf_counter()
    window_t, window_steps, window_loss, window_correct, window_kd = time.perf_counter(), 0, 0.0, 0.0, 0.0
    last = {}
    history, kd_history = [], []
    steps, lr = cfg.steps, cfg.lr
    loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    while int(step.numpy()) < steps:
        scale_before = float(optimizer.dynamic_scale.numpy()) if loss_scaled else None
        loss, l2, correct, kd = train_step(iterator)
        step.assign_add(1)
        s = int(step.numpy())
        if loss_scaled and float(optimizer.dynamic_scale.numpy()) < scale_before:
            # Keras halves the scale and skips the update when the fp16 gradients overflowed: say so.
            log.info("step %d skipped (loss scale -> %g)", s, float(optimizer.dynamic_scale.numpy()))
        loss_v, kd_v = float(loss), float(kd)
        if not (np.isfinite(loss_v) and np.isfinite(float(l2)) and np.isfinite(kd_v)):
            raise TrainingDiverged(
                f"loss is {loss_v} (L2 {float(l2)}, distillation {kd_v}) at step {s}; stopped without saving. The "
                f"last good checkpoint is {manager.latest_checkpoint}. Lower --lr (now {lr}), add --warmup_steps, "
                f"or check the data")
        history.append(loss_v + cfg.distill_weight * kd_v)
        kd_history.append(kd_v)
        window_steps += 1
        window_loss += loss_v
        window_kd += kd_v
        window_correct += float(correct)
        if s % cfg.log_every == 0 or s == steps:
            dt = time.perf_counter() - window_t
            ips = window_steps * cfg.batch_size / dt
            last = dict(step=s, loss=window_loss / window_steps, l2=float(l2), lr=current_lr(optimizer),
                        accuracy=window_correct / (window_steps * cfg.batch_size), images_per_s=ips,
                        distill_loss=window_kd / window_steps)
            log.info("step %d/%d  loss %.4f  distill %.4f  l2 %.4f  acc %.3f  lr %.4g  %.1f img/s", s, steps,
                     last["loss"], last["distill_loss"], last["l2"], last["accuracy"], last["lr"], ips)
            with writer.as_default(step=s):
                scalar_summary("loss", last["loss"], s)
                scalar_summary("distill_loss", last["distill_loss"], s)
                scalar_summary("l2_loss", last["l2"], s)
                scalar_summary("lr", last["lr"], s)
                scalar_summary("train_accuracy", last["accuracy"], s)
                scalar_summary("images_per_s", ips, s)
            window_t, window_steps, window_loss, window_correct, window_kd = time.perf_counter(), 0, 0.0, 0.0, 0.0
        if s % cfg.ckpt_every == 0 or s == steps:
            save_checkpoint(s)
        if cfg.val_every and (s % cfg.val_every == 0 or s == steps) and (cfg.val_bin or cfg.val_lfw_dir):
            reports = evaluate_verification(net, cfg.val_lfw_dir, cfg.val_pairs, cfg.val_bin, cfg.val_folds,
                                            cfg.val_flip)
            for key, rep in reports.items():
                if rep.get("accuracy") is None:  # a set of one kind of pair: a rate, no accuracy
                    rate = "true_accept_rate" if "true_accept_rate" in rep else "true_reject_rate"
                    log.info("step %d  %s verification %s %.4f (%s)", s, key, rate, rep[rate], rep["one_sided"])
                    continue
                log.info("step %d  %s verification accuracy %.4f +- %.4f%s", s, key, rep["accuracy"],
                         rep["accuracy_std"], f" (folds {cfg.val_folds})" if key == "lfw" and cfg.val_folds else "")
                with writer.as_default(step=s):
                    scalar_summary(f"val_{key}_accuracy", rep["accuracy"], s)
                last[f"val_{key}_accuracy"] = rep["accuracy"]
                if chief:
                    with open(model_dir / VAL_HISTORY, "a") as fh:
                        fh.write(json.dumps(dict(step=s, dataset=key, accuracy=rep["accuracy"],
                                                 accuracy_std=rep["accuracy_std"], folds=rep.get("folds"),
                                                 flip=cfg.val_flip, time=time.time(),
                                                 run_seconds=time.perf_counter() - t_start)) + "\n")
        if received:
            path = save_checkpoint(s) if s % cfg.ckpt_every and s != steps else manager.latest_checkpoint
            raise TrainingInterrupted(f"stopped by {received[0]} at step {s}; saved checkpoint {path}. Rerun the "
                                      f"same command to resume")
    writer.flush()

    # ---------------------------------------------------------------- the embedding model
    out = model_dir / EMBEDDING_FILE
    if chief:
        save_embedding_model(net, cfg.backbone, cfg.embedding_dim, cfg.head, out)
    else:
        for f in ckpt_dir.glob("*"):  # scratch checkpoints of a non-chief worker
            f.unlink()
        ckpt_dir.rmdir()
    return dict(last, start_step=start_step, final_step=int(step.numpy()), num_classes=num_classes,
                replicas=replicas, embedding_model=str(out), losses=history, distill_losses=kd_history, backbone=net, head=margin_head,
                projection=projection, changed=changed)


# ============================================================================ command line
def main(argv):
    """CLI: train from the flags (a TrainConfig), saving the embedding model in --model_dir; returns None (exit 0).

    Exits 1 with one "error: ..." line on bad settings or data, divergence, a signal or a full disk.
    Flags are defined by the module-level `define_flags()`.
    """
    from absl import flags

    del argv
    fl = flags.FLAGS
    # Progress lines go to stdout with their own handler: absl's app.run already put its handler (stderr)
    # on the root logger, so basicConfig alone would be a no-op and the log would land on stderr.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    if fl.threads:
        tf.config.threading.set_intra_op_parallelism_threads(fl.threads)
    if fl.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(fl.inter_op_threads)
    try:
        cfg = config_from_flags(fl)
        cfg.validate()
        check_flagfile_paths(cfg, sys.argv)
        # MultiWorkerMirroredStrategy must exist before TF runs any op, so it is made first.
        strategy = make_strategy(cfg.strategy)
        settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("data", "model_dir")}
        summary = train(cfg.data, cfg.model_dir, flags_text=fl.flags_into_string(), strategy_obj=strategy,
                        **settings)
    except (ValueError, TrainingDiverged, TrainingInterrupted, OSError) as e:  # bad input, divergence, signal,
        # a full disk: one line
        sys.exit(f"error: {e}")
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:  # a shard found corrupt mid-run
        detail = " ".join(str(e.message).split())[:600]
        sys.exit(f"error: bad training data: {detail}. Re-run tools/prepare_data.py, or pass --skip_corrupt")
    log.info("done at step %d; embedding model: %s", summary["final_step"], summary["embedding_model"])


if __name__ == "__main__":
    from absl import app

    define_flags()
    quiet.define_verbose_flag()
    app.run(main)
