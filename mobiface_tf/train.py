"""The trainer's command: python -m mobiface_tf.train --flagfile=configs/train.flags [--model_dir=DIR] [...]

The code lives in the package mobiface_tf.training (config and flags, schedules, strategy, model, step,
checkpoints, validation, loop); this module is only the entry point (also used by the `mobiface-train` console
script through `define_flags` and `main`).
"""
if __name__ == "__main__":  # before TensorFlow is imported: its start-up log is filtered unless --verbose
    import sys

    from mobiface_tf import quiet

    quiet.install(sys.argv)

from mobiface_tf.training.cli import main  # noqa: E402
from mobiface_tf.training.config import define_flags  # noqa: E402

__all__ = ["define_flags", "main"]

if __name__ == "__main__":
    from absl import app

    define_flags()
    quiet.define_verbose_flag()
    app.run(main)
