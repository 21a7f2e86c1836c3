"""Progress while training: the loss history, one log line and TensorBoard scalars every --log_every steps."""
from __future__ import annotations

import logging
import time

import tensorflow as tf

from mobiface_tf.training.model import current_lr

log = logging.getLogger(__name__)


def scalar_summary(tag: str, value: float, step: int):
    """A TensorBoard scalar written with TF's own summary op (tf.summary.scalar needs the tensorboard
    package, which training does not otherwise need). The metadata marks it for TensorBoard's scalars plugin,
    as tf.summary.scalar would."""
    from tensorflow.core.framework import summary_pb2

    meta = summary_pb2.SummaryMetadata()
    meta.plugin_data.plugin_name = "scalars"
    tf.summary.write(tag, tf.constant(value, tf.float32), step=step, metadata=meta.SerializeToString())


class Progress:
    """Per-step losses (`losses`: CE + distill_weight * distillation, `distill_losses`) and, every --log_every
    steps and at the last, the window's means in `last` (step, loss, l2, lr, accuracy, images_per_s,
    distill_loss), logged and written as TensorBoard scalars."""

    def __init__(self, cfg, optimizer, writer):
        self.cfg, self.optimizer, self.writer = cfg, optimizer, writer
        self.losses, self.distill_losses, self.last = [], [], {}
        self._reset()

    def _reset(self):
        self.t, self.n, self.loss, self.correct, self.kd = time.perf_counter(), 0, 0.0, 0.0, 0.0

    def add(self, step: int, loss: float, l2: float, correct: float, kd: float) -> None:
        """One step's (finite) values: mean CE loss, L2 term, correct count, mean distillation loss."""
        cfg = self.cfg
        self.losses.append(loss + cfg.distill_weight * kd)
        self.distill_losses.append(kd)
        self.n, self.loss, self.correct, self.kd = self.n + 1, self.loss + loss, self.correct + correct, self.kd + kd
        if step % cfg.log_every == 0 or step == cfg.steps:
            self._log(step, l2)

    def _log(self, step: int, l2: float) -> None:
        ips = self.n * self.cfg.batch_size / (time.perf_counter() - self.t)
        last = dict(step=step, loss=self.loss / self.n, l2=l2, lr=current_lr(self.optimizer),
                    accuracy=self.correct / (self.n * self.cfg.batch_size), images_per_s=ips,
                    distill_loss=self.kd / self.n)
        log.info("step %d/%d  loss %.4f  distill %.4f  l2 %.4f  acc %.3f  lr %.4g  %.1f img/s", step, self.cfg.steps,
                 last["loss"], last["distill_loss"], last["l2"], last["accuracy"], last["lr"], ips)
        with self.writer.as_default(step=step):
            for tag, key in (("loss", "loss"), ("distill_loss", "distill_loss"), ("l2_loss", "l2"), ("lr", "lr"),
                             ("train_accuracy", "accuracy"), ("images_per_s", "images_per_s")):
                scalar_summary(tag, last[key], step)
        self.last.update(last)
        self._reset()
