"""The training loop: `train(cfg)` runs (or resumes) one training to cfg.steps and returns its metrics;
`train_model(cfg)` returns the trained objects as well.

The paper's recipe (MobiFace §IV-A): SGD momentum 0.9, global batch 1024, lr 0.1 divided by 10 at 40K, 60K and
80K steps, stop at 100K, weight decay 5e-4 (coupled L2, see mobiface_tf.training.schedules), ArcFace s = 64,
m = 0.5. One custom loop under tf.distribute (mobiface_tf.training.strategy says why not Keras `fit`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import threading
import time
from pathlib import Path

import keras
import tensorflow as tf

from mobiface_tf.training.checkpoints import Checkpointer, compare_settings, pick_checkpoint, record_settings
from mobiface_tf.training.config import CHECKPOINTS, EMBEDDING_FILE, TrainConfig
from mobiface_tf.training.embedding import save_embedding_model
from mobiface_tf.training.errors import TrainingInterrupted
from mobiface_tf.training.inputs import check_inputs, worker_dataset
from mobiface_tf.locks import ModelDirLock
from mobiface_tf.training.model import Parts, build_parts, set_body_frozen
from mobiface_tf.training.progress import Progress
from mobiface_tf.training.schedules import make_schedule
from mobiface_tf.training.step import make_train_step
from mobiface_tf.training.strategy import is_chief, make_strategy
from mobiface_tf.training.validation import check_val_inputs, validate_now

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainResult:
    """`metrics` (what `train` returns) and the trained objects (live Keras objects: for tests and callers that
    go on using the model in this process)."""
    metrics: dict
    parts: Parts


def train(cfg: TrainConfig, *, strategy=None, flags_text: str | None = None) -> dict:
    """Train (or resume from the newest intact checkpoint in cfg.model_dir) to cfg.steps; returns the metrics.

    Metrics: start_step, final_step, num_classes, replicas, embedding_model (path of the saved .keras),
    losses and distill_losses (per step), changed (settings changed on resume: {name: (old, new)}) and the
    last log window (step, loss, l2, lr, accuracy, images_per_s, distill_loss, val_*_accuracy).
    `strategy` overrides cfg.strategy (a tf.distribute.Strategy made before TF ran ops: multi-worker, tests);
    `flags_text` is written to model_dir/flags.txt on the first run.

    One training per model_dir: ModelDirBusy (naming the other run's pid) when a live run holds its lock; a
    stale lock left by a killed run is taken over with a warning (mobiface_tf.locks).
    Raises ValueError for bad settings or input files (message says what to do; every file is opened before
    step 1), TrainingDiverged on a NaN / Inf loss or model, TrainingInterrupted after SIGINT / SIGTERM (a
    checkpoint of that step is saved first) and OSError when a checkpoint or the model cannot be written.
    """
    return train_model(cfg, strategy=strategy, flags_text=flags_text).metrics


def train_model(cfg: TrainConfig, *, strategy=None, flags_text: str | None = None) -> TrainResult:
    """`train`, returning the trained Parts (backbone, margin head, projection, optimizer) with the metrics."""
    cfg.validate()
    schedule = make_schedule(cfg)
    inputs = check_inputs(cfg)
    check_val_inputs(cfg)  # open held-out files before step 1, so a typo fails now, not after an hour
    with _process_state(cfg) as received:
        return _run(cfg, schedule, inputs, strategy or make_strategy(cfg.strategy), flags_text, received)


@contextlib.contextmanager
def _process_state(cfg):
    """Seed, op determinism and the dtype policy for the run; SIGINT / SIGTERM (a scheduler's pre-emption) are
    recorded in the yielded list, so the loop finishes the step, saves it and stops. Policy and handlers are
    restored for the caller."""
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(cfg.seed)
    policy = keras.mixed_precision.dtype_policy()
    keras.mixed_precision.set_dtype_policy("float32" if cfg.mixed_precision == "none" else cfg.mixed_precision)
    received, old_handlers = [], {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old_handlers[sig] = signal.signal(sig, lambda signum, frame: received.append(signal.Signals(signum).name))
    try:
        yield received
    finally:
        keras.mixed_precision.set_dtype_policy(policy)
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)


def _run(cfg, schedule, inputs, strat, flags_text, received) -> TrainResult:
    replicas = strat.num_replicas_in_sync
    if cfg.batch_size % replicas:
        raise ValueError(f"--batch_size={cfg.batch_size} is not divisible by the {replicas} replicas; "
                         f"use a multiple of {replicas}")
    chief, model_dir = is_chief(strat), Path(cfg.model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    # One training per model_dir: the chief holds the lock (other workers write only scratch checkpoints).
    with ModelDirLock(model_dir) if chief else contextlib.nullcontext():
        return _run_locked(cfg, schedule, inputs, strat, flags_text, received, chief, model_dir)


def _run_locked(cfg, schedule, inputs, strat, flags_text, received, chief: bool, model_dir: Path) -> TrainResult:
    replicas = strat.num_replicas_in_sync
    latest = pick_checkpoint(model_dir / CHECKPOINTS, cfg.resume_from)
    changed = compare_settings(cfg, model_dir, inputs.num_classes, inputs.teacher_dim) if latest else {}
    dataset = worker_dataset(cfg, inputs, strat)
    if latest and cfg.init_from:
        log.info("resuming from %s: --init_from=%s is ignored (the checkpoint wins)", latest, cfg.init_from)
    init_from = None if latest else cfg.init_from
    parts = build_parts(cfg, strat, schedule, inputs.num_classes, inputs.teacher_dim, init_from)
    if init_from:
        log.info("backbone started from the weights of %s; fresh margin head", init_from)
    iterator = iter(dataset)  # a plain tf.data iterator: checkpointable (exact resume)
    task_id = getattr(getattr(strat, "cluster_resolver", None), "task_id", 0)
    ckpt = Checkpointer(parts, iterator, model_dir, chief, task_id, cfg.max_to_keep, cfg.lr)
    ckpt.restore(latest, changed)
    if chief:
        record_settings(cfg, model_dir, inputs.num_classes, inputs.teacher_dim, not latest, changed,
                        int(parts.step.numpy()), flags_text)
    metrics = _loop(cfg, parts, strat, iterator, ckpt, model_dir if chief else None, received,
                    inputs.teacher_in_step())
    out = model_dir / EMBEDDING_FILE
    if chief:
        save_embedding_model(parts.backbone, cfg.backbone, cfg.embedding_dim, cfg.head, out)
    ckpt.remove_scratch()
    metrics.update(num_classes=inputs.num_classes, replicas=replicas, embedding_model=str(out), changed=changed)
    return TrainResult(metrics, parts)


def _loop(cfg, parts: Parts, strat, iterator, ckpt: Checkpointer, chief_dir: Path | None, received,
          teacher_fn=None) -> dict:
    """Steps from parts.step to cfg.steps: log, checkpoint, validate, stop on a signal. chief_dir: model_dir on
    the chief (summaries, validation history), None on other workers. teacher_fn: an online teacher run in the
    step (.keras / SavedModel), else None."""
    writer = tf.summary.create_file_writer(str(chief_dir / "train")) if chief_dir else tf.summary.create_noop_writer()
    progress, start_step, t_start = Progress(cfg, parts.optimizer, writer), int(parts.step.numpy()), time.perf_counter()
    val, steps = {}, _StepFunctions(cfg, strat, parts, teacher_fn)
    try:
        while (s := int(parts.step.numpy())) < cfg.steps:
            loss, l2, correct, kd = _one_step(steps.for_step(s), iterator, parts)
            s += 1
            ckpt.check_loss(s, loss, l2, kd)
            progress.add(s, loss, l2, correct, kd)
            if s % cfg.ckpt_every == 0 or s == cfg.steps:
                ckpt.save(s)
            val.update(validate_now(cfg, s, parts.backbone, writer, chief_dir, time.perf_counter() - t_start))
            if received:
                path = ckpt.save(s) if s % cfg.ckpt_every and s != cfg.steps else ckpt.latest
                raise TrainingInterrupted(f"stopped by {received[0]} at step {s}; saved checkpoint {path}. Rerun "
                                          f"the same command to resume")
    finally:
        writer.flush()
        set_body_frozen(parts.backbone, False)  # the caller gets an ordinary model
    return dict(progress.last, **val, start_step=start_step, final_step=int(parts.step.numpy()),
                losses=progress.losses, distill_losses=progress.distill_losses)


class _StepFunctions:
    """The train step for each step number: with --freeze_body_steps=N, steps 1..N train the embedding head and
    margin head only (the body frozen, its BN in inference mode); later steps train everything. teacher_fn: an
    online teacher run inside the step (.keras / SavedModel), else None."""

    def __init__(self, cfg, strategy, parts: Parts, teacher_fn=None):
        self.cfg, self.strategy, self.parts, self.teacher_fn = cfg, strategy, parts, teacher_fn
        self.frozen, self.fn = None, None

    def for_step(self, done: int):
        """The tf.function for the step after `done` completed steps."""
        frozen = done < self.cfg.freeze_body_steps
        if frozen != self.frozen:
            p, cfg = self.parts, self.cfg
            set_body_frozen(p.backbone, frozen)  # read when the new function is traced (its first call, next)
            self.fn = make_train_step(self.strategy, p.backbone, p.head, p.optimizer, cfg.weight_decay,
                                      cfg.batch_size, cfg.distill_weight, cfg.distill_loss, p.projection,
                                      self.teacher_fn)
            if frozen or self.frozen is not None:
                log.info("step %d: body %s", done + 1, f"frozen until step {cfg.freeze_body_steps}" if frozen
                         else "unfrozen: training every layer")
            self.frozen = frozen
        return self.fn


def _one_step(train_step, iterator, parts: Parts) -> tuple[float, float, float, float]:
    """One step and the step counter; says when fp16 loss scaling skipped the update. Returns (mean CE loss,
    L2 term, correct count, mean distillation loss) as floats."""
    opt = parts.optimizer
    scaled = isinstance(opt, keras.optimizers.LossScaleOptimizer)
    scale_before = float(opt.dynamic_scale.numpy()) if scaled else None
    loss, l2, correct, kd = train_step(iterator)
    parts.step.assign_add(1)
    if scaled and float(opt.dynamic_scale.numpy()) < scale_before:
        # Keras halves the scale and skips the update when the fp16 gradients overflowed: say so.
        log.info("step %d skipped (loss scale -> %g)", int(parts.step.numpy()), float(opt.dynamic_scale.numpy()))
    return float(loss), float(l2), float(correct), float(kd)
