"""The trainer's command: python -m mobiface_tf.train --flagfile=configs/train.flags [--model_dir=DIR] [...]

The code lives in the package mobiface_tf.training (config and flags, schedules, strategy, model, step,
checkpoints, validation, loop); this module is only the entry point, used by `python -m mobiface_tf.train`
and the `mobiface-train` console script (both through mobiface_tf.cli.run_command, which owns quiet
start-up, the `error:` line and the exit codes).
"""
if __name__ == "__main__":  # before TensorFlow is imported: its start-up log is filtered unless --verbose
    from mobiface_tf import cli

    cli.train()

from mobiface_tf.training.cli import main  # noqa: E402
from mobiface_tf.training.config import define_flags  # noqa: E402

__all__ = ["define_flags", "main"]
