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

Layout: library functions first (schedule, strategy, model, step, loop) taking plain arguments, so tests
call them without flags; absl flags and `main` at the bottom.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from mobiface_tf import models
from mobiface_tf.heads import MARGINS, MarginHead, margin_params

log = logging.getLogger("mobiface_tf.train")
STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker")
PRECISIONS = ("none", "mixed_float16", "mixed_bfloat16")
EMBEDDING_FILE = "embedding.keras"


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
    """models.build(...) with the head choice where the backbone has one; optional synchronised BN.

    Synchronised BN (mean / variance all-reduced over replicas) makes a MirroredStrategy step equal to a
    one-device step on the same global batch; without it each replica normalises with its own batch.
    """
    kwargs = dict(embedding_dim=embedding_dim)
    if head and backbone != "mobilefacenet":  # MobileFaceNet has only its GDC head
        kwargs["head"] = head
    model = models.build(backbone, **kwargs)
    if sync_bn:
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.synchronized = True
    return model


def decayed_variables(variables) -> list:
    """Conv / depthwise / dense kernels and class centres get weight decay; BN and PReLU parameters do not."""
    return [v for v in variables if v.path.split("/")[-1] in ("kernel", "depthwise_kernel", "centres")]


def make_optimizer(lr_schedule, momentum: float, mixed_precision: str = "none"):
    """SGD with momentum; fp16 wraps it in dynamic loss scaling (bf16 has fp32's range and needs none)."""
    opt = keras.optimizers.SGD(learning_rate=lr_schedule, momentum=momentum)
    if mixed_precision == "mixed_float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


def current_lr(optimizer) -> float:
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


def make_train_step(strategy, backbone, head, optimizer, weight_decay: float, global_batch: int):
    """A tf.function(iterator) -> (mean CE loss, L2 term, correct count) summed over replicas, one SGD step.

    `iterator` yields this worker's batch (global_batch / workers images); each local replica takes its
    contiguous slice, so one device and N mirrored devices see exactly the same global batch. (A plain
    tf.data iterator, unlike tf.distribute's distributed iterators, can be saved in a checkpoint: exact resume.)

    Per replica the CE sum is divided by the GLOBAL batch, so the SUM-reduce over replicas is the global mean
    and the gradients all-reduced by the optimizer match a one-device step on the whole batch.
    """
    variables = backbone.trainable_variables + head.trainable_variables
    decayed = decayed_variables(variables)
    replicas = strategy.num_replicas_in_sync
    local = len(strategy.extended.worker_devices)
    per_replica = global_batch // replicas

    def step_fn(images, labels):
        with tf.GradientTape() as tape:
            emb = backbone(images, training=True)
            logits = head(emb, labels)
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
            loss = tf.reduce_sum(ce) / global_batch
            l2 = 0.5 * weight_decay * tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float32))) for v in decayed])
            total = loss + l2 / replicas
            scaled = optimizer.scale_loss(total)  # identity unless LossScaleOptimizer
        # Train accuracy from the margin-free logits (argmax of cos(theta), or W x + b for softmax), read
        # before the update (tf.function keeps program order for reads and writes of the same variable).
        pred = tf.argmax(head(tf.stop_gradient(emb)), axis=1, output_type=tf.int32)
        correct = tf.reduce_sum(tf.cast(tf.equal(pred, labels), tf.float32))
        grads = tape.gradient(scaled, variables)
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            grads = _skip_together(grads)
        optimizer.apply(grads, variables)
        return loss, l2 / replicas, correct

    @tf.function
    def train_step(iterator):
        images, labels = next(iterator)

        def split(ctx):  # replica ids are worker-major, so id % local is the local index
            i = ctx.replica_id_in_sync_group % local
            return images[i * per_replica:(i + 1) * per_replica], labels[i * per_replica:(i + 1) * per_replica]

        x, y = strategy.experimental_distribute_values_from_function(lambda ctx: split(ctx)[0]), \
            strategy.experimental_distribute_values_from_function(lambda ctx: split(ctx)[1])
        out = strategy.run(step_fn, args=(x, y))
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
class _ModelEmbedder:
    """The embedder interface (mobiface_tf.embedder) over the in-memory backbone, for held-out verification."""

    def __init__(self, model, batch_size: int = 64):
        from mobiface_tf.embedder import Embedder

        self._base = Embedder(Path("<training model>"), "raw", batch_size, tuple(model.input_shape[1:]),
                              model.output_shape[-1])
        self._base._forward = lambda b: np.asarray(model(b, training=False), np.float32)
        self.embedding_dim = self._base.embedding_dim

    def embed(self, images, flip=False):
        return self._base.embed(images, flip=flip)


def evaluate_verification(backbone, lfw_dir=None, pairs=None, bin_path=None) -> dict:
    """10-fold verification accuracy on LFW-style pairs and/or a .bin, via mobiface_tf.evaluate."""
    from mobiface_tf import evaluate as ev

    emb = _ModelEmbedder(backbone)
    out = {}
    if lfw_dir and pairs:
        out["lfw"] = ev.evaluate_lfw(emb, pairs, lfw_dir, progress=False)[0]
    if bin_path:
        out["bin"] = ev.evaluate_bin(emb, bin_path, progress=False)[0]
    return out


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
    clean.save(path)
    return path


def train(data: str, model_dir: str, *, backbone="mobiface", head="gdc", embedding_dim=512, margin="arcface",
          margin_s=None, margin_m1=None, margin_m2=None, margin_m3=None, batch_size=1024, lr=0.1,
          lr_boundaries=(40000, 60000, 80000), lr_decay=0.1, warmup_steps=0, steps=100000, momentum=0.9,
          weight_decay=5e-4, mixed_precision="none", strategy="auto", sync_bn=False, log_every=20,
          ckpt_every=1000, max_to_keep=3, seed=0, deterministic=False, val_lfw_dir=None, val_pairs=None,
          val_bin=None, val_every=0, shuffle_buffer=10000, skip_corrupt=False, flags_text: str | None = None,
          strategy_obj=None) -> dict:
    """Train (or resume from the latest checkpoint in model_dir) to `steps`; returns a summary dict.

    Raises ValueError for bad arguments (message says what to do) and TrainingDiverged on a NaN / Inf loss.
    """
    args = dict(locals())  # every argument, passed on to _train unchanged
    from mobiface_tf.data.pipeline import match_files, read_manifest

    # ---------------------------------------------------------------- checks before any heavy work
    if backbone not in models.BUILDERS:
        raise ValueError(f"unknown --backbone {backbone!r}; expected one of {sorted(models.BUILDERS)}")
    if margin not in MARGINS:
        raise ValueError(f"unknown --margin {margin!r}; expected one of {sorted(MARGINS)}")
    margin_params(margin, margin_s, margin_m1, margin_m2, margin_m3)  # range checks before any work
    if mixed_precision not in PRECISIONS:
        raise ValueError(f"unknown --mixed_precision {mixed_precision!r}; expected one of {PRECISIONS}")
    for name, value in dict(batch_size=batch_size, steps=steps, log_every=log_every, ckpt_every=ckpt_every,
                            embedding_dim=embedding_dim).items():
        if value < 1:
            raise ValueError(f"--{name} must be >= 1, got {value}")
    if weight_decay < 0 or not 0 <= momentum < 1:
        raise ValueError(f"need --weight_decay >= 0 and 0 <= --momentum < 1, got {weight_decay}, {momentum}")
    if bool(val_lfw_dir) != bool(val_pairs):
        raise ValueError(f"--val_lfw_dir ({val_lfw_dir!r}) and --val_pairs ({val_pairs!r}) go together")
    schedule = PiecewiseWithWarmup(lr, lr_boundaries, lr_decay, warmup_steps)
    files = match_files(data)
    num_classes = int(read_manifest(files[0])["num_classes"])

    if deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(seed)
    policy = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("float32" if mixed_precision == "none" else mixed_precision)
    try:
        return _train(**args, schedule=schedule, files=files, num_classes=num_classes)
    finally:
        keras.mixed_precision.set_dtype_policy(policy)  # the global policy is restored for the caller


def _train(data, model_dir, *, backbone, head, embedding_dim, margin, margin_s, margin_m1, margin_m2, margin_m3,
           batch_size, lr, lr_boundaries, lr_decay, warmup_steps, steps, momentum, weight_decay, mixed_precision,
           strategy, sync_bn, log_every, ckpt_every, max_to_keep, seed, deterministic, val_lfw_dir, val_pairs,
           val_bin, val_every, shuffle_buffer, skip_corrupt, flags_text, strategy_obj, schedule, files,
           num_classes) -> dict:
    from mobiface_tf.data.pipeline import make_dataset

    strat = strategy_obj or make_strategy(strategy)
    replicas = strat.num_replicas_in_sync
    if batch_size % replicas:
        raise ValueError(f"--batch_size={batch_size} is not divisible by the {replicas} replicas; "
                         f"use a multiple of {replicas}")
    chief = is_chief(strat)
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    if chief and flags_text is not None:
        (model_dir / "flags.txt").write_text(flags_text)

    # ---------------------------------------------------------------- data (start it early)
    ctx = worker_input_context(strat)
    worker_batch = batch_size // ctx.num_input_pipelines
    dataset = make_dataset(files, worker_batch, training=True, seed=seed, deterministic=deterministic,
                           shuffle_buffer=shuffle_buffer, input_context=ctx, skip_corrupt=skip_corrupt)

    # ---------------------------------------------------------------- model, optimizer, checkpoint
    with strat.scope():
        net = build_backbone(backbone, embedding_dim, head, sync_bn)
        margin_head = MarginHead(num_classes, margin, margin_s, margin_m1, margin_m2, margin_m3)
        margin_head.build((None, embedding_dim))
        optimizer = make_optimizer(schedule, momentum, mixed_precision)
        # Keras issue 23085: create the optimizer's slots inside the scope, before the first (traced) step.
        optimizer.build(net.trainable_variables + margin_head.trainable_variables)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    iterator = iter(dataset)  # a plain tf.data iterator: checkpointable
    ckpt = tf.train.Checkpoint(backbone=net, head=margin_head, optimizer=optimizer, step=step, iterator=iterator)
    # Non-chief workers must take part in saving (variables are synchronised) but write to a scratch dir.
    ckpt_dir = model_dir / "checkpoints" if chief else model_dir / f"checkpoints_worker{strat.cluster_resolver.task_id}"
    manager = tf.train.CheckpointManager(ckpt, str(ckpt_dir), max_to_keep=max_to_keep)
    latest = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
    if latest:
        ckpt.restore(latest).assert_existing_objects_matched()
        log.info("resumed from %s at step %d", latest, int(step.numpy()))
    train_step = make_train_step(strat, net, margin_head, optimizer, weight_decay, batch_size)
    writer = tf.summary.create_file_writer(str(model_dir / "train")) if chief else tf.summary.create_noop_writer()

    # ---------------------------------------------------------------- loop
    start_step = int(step.numpy())
    window_t, window_steps, window_loss, window_correct = time.perf_counter(), 0, 0.0, 0.0
    last = {}
    history = []
    while int(step.numpy()) < steps:
        loss, l2, correct = train_step(iterator)
        step.assign_add(1)
        s = int(step.numpy())
        loss_v = float(loss)
        if not np.isfinite(loss_v) or not np.isfinite(float(l2)):
            raise TrainingDiverged(
                f"loss is {loss_v} (L2 {float(l2)}) at step {s}; stopped without saving. The last good checkpoint "
                f"is {manager.latest_checkpoint}. Lower --lr (now {lr}), add --warmup_steps, or check the data")
        history.append(loss_v)
        window_steps += 1
        window_loss += loss_v
        window_correct += float(correct)
        if s % log_every == 0 or s == steps:
            dt = time.perf_counter() - window_t
            ips = window_steps * batch_size / dt
            last = dict(step=s, loss=window_loss / window_steps, l2=float(l2), lr=current_lr(optimizer),
                        accuracy=window_correct / (window_steps * batch_size), images_per_s=ips)
            log.info("step %d/%d  loss %.4f  l2 %.4f  acc %.3f  lr %.4g  %.1f img/s", s, steps, last["loss"],
                     last["l2"], last["accuracy"], last["lr"], ips)
            with writer.as_default(step=s):
                scalar_summary("loss", last["loss"], s)
                scalar_summary("l2_loss", last["l2"], s)
                scalar_summary("lr", last["lr"], s)
                scalar_summary("train_accuracy", last["accuracy"], s)
                scalar_summary("images_per_s", ips, s)
            window_t, window_steps, window_loss, window_correct = time.perf_counter(), 0, 0.0, 0.0
        if s % ckpt_every == 0 or s == steps:
            # The loss above was computed before this step's update: check the weights themselves too, so
            # a checkpoint never holds a diverged model.
            if not all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in net.trainable_variables +
                       margin_head.trainable_variables):
                raise TrainingDiverged(
                    f"weights became NaN/Inf at step {s}; stopped without saving. The last good checkpoint is "
                    f"{manager.latest_checkpoint}. Lower --lr (now {lr}), add --warmup_steps, or check the data")
            manager.save(checkpoint_number=s)
        if val_every and (s % val_every == 0 or s == steps) and (val_bin or val_lfw_dir):
            reports = evaluate_verification(net, val_lfw_dir, val_pairs, val_bin)
            for key, rep in reports.items():
                log.info("step %d  %s verification accuracy %.4f +- %.4f", s, key, rep["accuracy"],
                         rep["accuracy_std"])
                with writer.as_default(step=s):
                    scalar_summary(f"val_{key}_accuracy", rep["accuracy"], s)
                last[f"val_{key}_accuracy"] = rep["accuracy"]
    writer.flush()

    # ---------------------------------------------------------------- the embedding model
    out = model_dir / EMBEDDING_FILE
    if chief:
        save_embedding_model(net, backbone, embedding_dim, head, out)
    else:
        for f in ckpt_dir.glob("*"):  # scratch checkpoints of a non-chief worker
            f.unlink()
        ckpt_dir.rmdir()
    return dict(last, start_step=start_step, final_step=int(step.numpy()), num_classes=num_classes,
                replicas=replicas, embedding_model=str(out), losses=history, backbone=net, head=margin_head)


# ============================================================================ command line
def _define_flags():
    from absl import flags

    f = flags
    f.DEFINE_string("data", None, "TFRecord shards: glob or directory (manifest.json next to them gives num_classes)")
    f.DEFINE_string("model_dir", None, "checkpoints, TensorBoard events, flags.txt and embedding.keras go here")
    f.DEFINE_string("val_lfw_dir", None, "held-out verification images <Name>/<Name>_NNNN.jpg (with --val_pairs)")
    f.DEFINE_string("val_pairs", None, "LFW View 2 style pairs.txt for --val_lfw_dir")
    f.DEFINE_string("val_bin", None, "InsightFace verification .bin")
    f.DEFINE_integer("val_every", 0, "evaluate verification every N steps (0: only never)", lower_bound=0)
    f.DEFINE_enum("backbone", "mobiface", sorted(models.BUILDERS), "network")
    f.DEFINE_enum("head", "gdc", ["fc", "gdc", "gap"], "embedding head (fc = literal Table I); ignored by mobilefacenet")
    f.DEFINE_integer("embedding_dim", 512, "embedding size", lower_bound=1)
    f.DEFINE_enum("margin", "arcface", sorted(MARGINS), "margin head (presets in mobiface_tf/heads.py)")
    f.DEFINE_float("margin_s", None, "override the preset scale s")
    f.DEFINE_float("margin_m1", None, "override the preset multiplicative angular margin m1")
    f.DEFINE_float("margin_m2", None, "override the preset additive angular margin m2")
    f.DEFINE_float("margin_m3", None, "override the preset additive cosine margin m3")
    f.DEFINE_integer("batch_size", 1024, "GLOBAL batch size (split over replicas)", lower_bound=1)
    f.DEFINE_float("lr", 0.1, "base learning rate")
    f.DEFINE_list("lr_boundaries", ["40000", "60000", "80000"], "steps where lr is multiplied by --lr_decay")
    f.DEFINE_float("lr_decay", 0.1, "lr factor at each boundary")
    f.DEFINE_integer("warmup_steps", 0, "linear lr warmup steps", lower_bound=0)
    f.DEFINE_integer("steps", 100000, "total training steps", lower_bound=1)
    f.DEFINE_float("momentum", 0.9, "SGD momentum")
    f.DEFINE_float("weight_decay", 5e-4, "coupled L2 weight decay (gradient += wd * w)")
    f.DEFINE_enum("mixed_precision", "none", list(PRECISIONS), "compute precision (head and loss stay float32)")
    f.DEFINE_enum("strategy", "auto", list(STRATEGIES), "tf.distribute strategy (multi_worker reads TF_CONFIG)")
    f.DEFINE_bool("sync_bn", False, "synchronise BN statistics across replicas")
    f.DEFINE_integer("log_every", 20, "log line + TensorBoard scalars every N steps", lower_bound=1)
    f.DEFINE_integer("ckpt_every", 1000, "checkpoint every N steps", lower_bound=1)
    f.DEFINE_integer("max_to_keep", 3, "checkpoints kept", lower_bound=1)
    f.DEFINE_integer("seed", 0, "random seed (model init, shuffling, flips)")
    f.DEFINE_bool("deterministic", False, "op determinism + deterministic tf.data (slower; for exact resume)")
    f.DEFINE_integer("shuffle_buffer", 10000, "tf.data shuffle buffer (examples)", lower_bound=1)
    f.DEFINE_bool("skip_corrupt", False, "keep the readable records of a truncated/corrupt TFRecord shard (with a "
                  "warning naming it) instead of stopping with an error that names it")
    f.DEFINE_integer("threads", 0, "TF intra-op threads (0: TF's default)", lower_bound=0)
    f.DEFINE_integer("inter_op_threads", 0, "TF inter-op threads (0: TF's default)", lower_bound=0)
    f.register_validator("lr", lambda v: v > 0, message="--lr must be > 0 (the paper uses 0.1 at batch 1024)")
    f.mark_flags_as_required(["data", "model_dir"])


def main(argv):
    from absl import flags

    del argv
    fl = flags.FLAGS
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    log.setLevel(logging.INFO)
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    if fl.threads:
        tf.config.threading.set_intra_op_parallelism_threads(fl.threads)
    if fl.inter_op_threads:
        tf.config.threading.set_inter_op_parallelism_threads(fl.inter_op_threads)
    try:
        boundaries = [int(b) for b in fl.lr_boundaries]
    except ValueError:
        sys.exit(f"error: --lr_boundaries must be integers, got {fl.lr_boundaries}")
    try:
        # MultiWorkerMirroredStrategy must exist before TF runs any op, so it is made first.
        strategy = make_strategy(fl.strategy)
        summary = train(
            fl.data, fl.model_dir, backbone=fl.backbone, head=fl.head, embedding_dim=fl.embedding_dim,
            margin=fl.margin, margin_s=fl.margin_s, margin_m1=fl.margin_m1, margin_m2=fl.margin_m2,
            margin_m3=fl.margin_m3, batch_size=fl.batch_size, lr=fl.lr, lr_boundaries=boundaries,
            lr_decay=fl.lr_decay, warmup_steps=fl.warmup_steps, steps=fl.steps, momentum=fl.momentum,
            weight_decay=fl.weight_decay, mixed_precision=fl.mixed_precision, strategy=fl.strategy,
            sync_bn=fl.sync_bn, log_every=fl.log_every, ckpt_every=fl.ckpt_every, max_to_keep=fl.max_to_keep,
            seed=fl.seed, deterministic=fl.deterministic, val_lfw_dir=fl.val_lfw_dir, val_pairs=fl.val_pairs,
            val_bin=fl.val_bin, val_every=fl.val_every, shuffle_buffer=fl.shuffle_buffer, skip_corrupt=fl.skip_corrupt,
            flags_text=fl.flags_into_string(), strategy_obj=strategy)
    except (ValueError, TrainingDiverged) as e:  # bad flags / data, or divergence: one line, no traceback
        sys.exit(f"error: {e}")
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:  # a shard found corrupt mid-run
        detail = " ".join(str(e.message).split())[:600]
        sys.exit(f"error: bad training data: {detail}. Re-run tools/prepare_data.py, or pass --skip_corrupt")
    log.info("done at step %d; embedding model: %s", summary["final_step"], summary["embedding_model"])


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
