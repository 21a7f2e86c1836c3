"""The command line of the trainer (`python -m mobiface_tf.train --flagfile=configs/train.flags`): flags are
generated from TrainConfig (mobiface_tf.training.config.define_flags); `main` runs one training."""
from __future__ import annotations

import logging
import sys

import tensorflow as tf

from mobiface_tf.training.config import check_flagfile_paths, config_from_flags
from mobiface_tf.training.errors import TrainingDiverged, TrainingInterrupted
from mobiface_tf.locks import ModelDirBusy
from mobiface_tf.training.loop import train
from mobiface_tf.training.strategy import make_strategy

log = logging.getLogger("mobiface_tf.training")


def main(argv):
    """CLI: train from the flags (a TrainConfig), saving the embedding model in --model_dir; returns None (exit 0).

    Exits 2 with one "error: ..." line on bad settings or data, a --model_dir that another live run holds
    (naming its pid), divergence or a full disk; 130 with one "interrupted: ..." line after SIGINT / SIGTERM
    (mobiface_tf.cli).
    Flags are defined by mobiface_tf.training.config.define_flags().
    """
    from absl import flags

    del argv
    fl = flags.FLAGS
    _log_to_stdout()
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
        summary = train(cfg, strategy=strategy, flags_text=fl.flags_into_string())
    except TrainingInterrupted as e:  # Ctrl-C / SIGTERM, checkpoint saved: one line and exit 130 (mobiface_tf.cli)
        raise KeyboardInterrupt(str(e)) from None
    except (ValueError, ModelDirBusy, TrainingDiverged, OSError) as e:  # bad input, another run in this
        # model_dir, divergence, a full disk: one line, exit 2
        sys.exit(f"error: {e}")
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:  # a shard found corrupt mid-run
        detail = " ".join(str(e.message).split())[:600]
        sys.exit(f"error: bad training data: {detail}. Re-run mobiface-prepare, or pass --skip_corrupt")
    log.info("done at step %d; embedding model: %s", summary["final_step"], summary["embedding_model"])


def _log_to_stdout() -> None:
    """Progress lines of every mobiface_tf.training module go to stdout with their own handler: absl's app.run
    already put its handler (stderr) on the root logger, so basicConfig alone would be a no-op."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
