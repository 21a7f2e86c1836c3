"""Checkpoints and resume: integrity checks, which checkpoint a run resumes from, the settings a resume may not
change, and the NaN-guarded save (a checkpoint never holds a diverged model).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path

import numpy as np
import tensorflow as tf

from mobiface_tf.training.config import CHECKPOINTS, CONFIG_FILE, FLAGS_FILE, PIPELINE_SETTINGS
from mobiface_tf.training.errors import TrainingDiverged
from mobiface_tf.atomic import write_text_atomic

log = logging.getLogger(__name__)


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


def list_checkpoints(ckpt_dir: Path) -> list[str]:
    """Checkpoint prefixes ".../ckpt-N" in ckpt_dir, oldest first (by step number N)."""
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
    candidates = list_checkpoints(ckpt_dir) if ckpt_dir.is_dir() else []
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


def nonfinite_variables(variables) -> list[str]:
    """The paths of the floating variables holding any NaN or Inf."""
    return [v.path for v in variables if "float" in str(v.dtype) and not bool(tf.reduce_all(tf.math.is_finite(v)))]


def compare_settings(cfg, model_dir: Path, num_classes: int, teacher_dim: int) -> dict:
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


def record_settings(cfg, model_dir: Path, num_classes: int, teacher_dim: int, fresh: bool, changed: dict,
                    step: int, flags_text: str | None = None) -> None:
    """Chief only. A fresh run writes config.json (compared by `compare_settings` on resume) and flags.txt; a
    resume that changed settings appends one line to flags.txt. Files are replaced atomically (mobiface_tf.atomic)."""
    if fresh:
        settings = dict(dataclasses.asdict(cfg), num_classes=num_classes, teacher_dim=teacher_dim)
        write_text_atomic(model_dir / CONFIG_FILE, json.dumps(settings, indent=1, default=str) + "\n")
        if flags_text is not None:
            write_text_atomic(model_dir / FLAGS_FILE, flags_text)
    elif changed:
        with open(model_dir / FLAGS_FILE, "a") as fh:
            fh.write(f"# resumed at step {step} with: " + " ".join(f"--{k}={n}" for k, (o, n) in changed.items()) +
                     "\n")


class Checkpointer:
    """Saves and restores one run's Parts and data iterator in MODEL_DIR/checkpoints (the chief) or a scratch
    folder (another multi-worker worker: it must take part in saving, the variables being synchronised).

    `save` refuses (TrainingDiverged) when any variable is NaN/Inf, and turns a full disk or read-only folder
    into OSError with what to do."""

    def __init__(self, parts, iterator, model_dir: Path, chief: bool, task_id, max_to_keep: int, lr: float):
        self.parts, self.lr = parts, lr
        self.ckpt = tf.train.Checkpoint(**parts.checkpointables(), iterator=iterator)
        self.dir = model_dir / CHECKPOINTS if chief else model_dir / f"checkpoints_worker{task_id}"
        self.manager = tf.train.CheckpointManager(self.ckpt, str(self.dir), max_to_keep=max_to_keep)

    @property
    def latest(self) -> str | None:
        return self.manager.latest_checkpoint

    def restore(self, prefix: str | None, changed: dict) -> None:
        """Restore `prefix` (None: nothing to do). When the batch size, seed, shuffle buffer or an augmentation
        setting changed (config.PIPELINE_SETTINGS), the saved iterator would yield the old batches: everything else
        is restored and the iterator starts afresh."""
        if not prefix:
            return
        if set(PIPELINE_SETTINGS) & set(changed):
            tf.train.Checkpoint(**self.parts.checkpointables()).restore(prefix).expect_partial()
            log.info("resumed from %s at step %d with a fresh data iterator (changed: %s)", prefix,
                     int(self.parts.step.numpy()), ", ".join(f"{k} {o} -> {n}" for k, (o, n) in changed.items()))
        else:
            self.ckpt.restore(prefix).assert_existing_objects_matched()
            log.info("resumed from %s at step %d", prefix, int(self.parts.step.numpy()))

    def check_loss(self, step: int, loss: float, l2: float, kd: float) -> None:
        """The NaN guard on a step's losses: TrainingDiverged, naming the last good checkpoint, unless all finite."""
        if not (np.isfinite(loss) and np.isfinite(l2) and np.isfinite(kd)):
            raise TrainingDiverged(
                f"loss is {loss} (L2 {l2}, distillation {kd}) at step {step}; stopped without saving. The last good "
                f"checkpoint is {self.latest}. Lower --lr (now {self.lr}), add --warmup_steps, or check the data")

    def save(self, step: int) -> str:
        """Save a checkpoint of `step`; returns its prefix. The loss was computed before this step's update, so
        every variable the checkpoint holds is checked here (weights, BN moving statistics, optimizer slots)."""
        bad = nonfinite_variables(self.parts.all_variables())
        if bad:
            raise TrainingDiverged(
                f"{len(bad)} variable(s) became NaN/Inf at step {step} (e.g. {bad[0]}); stopped without saving. The "
                f"last good checkpoint is {self.latest}. Lower --lr (now {self.lr}), add --warmup_steps, or check "
                f"the data")
        try:
            return self.manager.save(checkpoint_number=step)
        except (OSError, tf.errors.OpError) as e:  # a full disk, a read-only folder
            first = (str(getattr(e, "message", e)).strip().splitlines() or [type(e).__name__])[0]
            raise OSError(f"cannot write checkpoint {str(self.dir / f'ckpt-{step}')!r} ({first[:200]}); free space "
                          f"and rerun the same command: it resumes from {self.latest}") from None

    def remove_scratch(self) -> None:
        """Another worker's scratch checkpoints are deleted at the end (the chief's are the run's)."""
        if self.dir.name != CHECKPOINTS and self.dir.is_dir():
            for f in self.dir.glob("*"):
                f.unlink()
            self.dir.rmdir()
