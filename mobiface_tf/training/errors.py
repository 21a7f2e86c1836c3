"""The trainer's own exceptions: each ends a run with one line (mobiface_tf.training.cli)."""


class TrainingDiverged(RuntimeError):
    """The loss or a variable became NaN or Inf; training stopped and the last good checkpoint was kept."""


class TrainingInterrupted(RuntimeError):
    """SIGINT (Ctrl-C) or SIGTERM: a checkpoint of the current step was saved, and training stopped."""
