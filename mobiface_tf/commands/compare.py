"""MobiFace vs MobileFaceNet vs MobileNetV1 trained the same way (distillation), scored on held-out LFW folds,
exported to fp32 / fp16 / int8 TFLite and timed in one run. The `compare` command over mobiface_tf.compare.

    mobiface-compare --output_dir=runs/compare --data=runs/distill/data \
        --teacher=../shared/data/models/mobilefacenet_insightface_fp32.tflite \
        --lfw_dir=../shared/data/lfw/lfw-112x112 --pairs=../shared/data/lfw/pairs.txt --steps=400
    mobiface-compare --output_dir=/tmp/cmp --synthetic --steps=4     # smoke run, no ../shared

Writes DIR/results.json, DIR/results.md and DIR/accuracy_vs_latency.png. A rerun skips what is done.
"""
from __future__ import annotations

import logging
import os
import sys

from absl import flags

from mobiface_tf.outputs import check_output_dir, check_output_file, is_png_file, json_report, markdown_starting

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", None, "results, checkpoints and exports go here", required=True)
flags.DEFINE_string("data", None, "training shards with teacher embeddings, made without the held-out folds' people "
                    "(default: made from --lfw_dir into DIR/data)")
flags.DEFINE_string("teacher", None, "teacher model (.tflite, .onnx, .keras, SavedModel): a reference row, and the "
                    "source of the teacher embeddings when --data is not given")
flags.DEFINE_string("teacher_uint8", None, "the publisher's int8 of the teacher, as a reference row (default: the "
                    "teacher's *_uint8.tflite sibling when it exists)")
flags.DEFINE_string("lfw_dir", None, "LFW-style images <Name>/<Name>_NNNN.<ext>")
flags.DEFINE_string("pairs", None, "LFW View 2 pairs.txt")
flags.DEFINE_list("folds", ["1", "2", "3"], "held-out folds (1-based)")
flags.DEFINE_list("models", ["mobiface_gdc", "mobilefacenet", "mobilenet_v1_gdc"], "zoo names of the students")
flags.DEFINE_integer("steps", 1400, "training steps per network (same for all)", lower_bound=1)
flags.DEFINE_integer("batch_size", 64, "training batch (same for all)", lower_bound=1)
flags.DEFINE_integer("embedding_dim", None, "student embedding size (default: the teacher's)", lower_bound=1)
flags.DEFINE_integer("num_calibration", 200, "int8 calibration faces, taken from the training shards", lower_bound=1)
flags.DEFINE_integer("latency_rounds", 50, "interleaved timing rounds", lower_bound=1)
flags.DEFINE_bool("synthetic", False, "a smoke run on generated faces and a random-init teacher (no ../shared)")
flags.DEFINE_integer("threads", 0, "TF intra-op threads for training (0: TF's default)", lower_bound=0)


def main(argv):
    """CLI: train, score, export and time the compared networks (mobiface_tf.compare.run), print results.md.

    Returns None (exit 0); exits 2 with one "error: ..." line on bad input or an --output_dir that cannot be
    written, checked before TensorFlow loads (mobiface_tf.cli). Flags are defined at module level.
    """
    del argv
    out = check_output_dir(FLAGS.output_dir, "--output_dir")
    if out.is_dir():  # each is replaced only when it is compare's own (never a file of the user's of that name)
        for name, ours, what in (("results.json", json_report("rows", "budget"), "a compare results.json"),
                                 ("results.md", markdown_starting("| network | form |"), "a compare results.md"),
                                 ("accuracy_vs_latency.png", is_png_file, "a PNG chart")):
            check_output_file(out / name, f"--output_dir (its {name})", ours=ours, what=what)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    logging.getLogger("mobiface_tf.training").setLevel(logging.INFO)
    import tensorflow as tf

    from mobiface_tf import compare

    if FLAGS.threads:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
    try:
        folds = [int(f) for f in FLAGS.folds]
    except ValueError:
        sys.exit(f"error: --folds must be integers, got {FLAGS.folds}")
    try:
        result = compare.run(FLAGS.output_dir, data=FLAGS.data, teacher=FLAGS.teacher, lfw_dir=FLAGS.lfw_dir,
                             pairs=FLAGS.pairs, folds=folds, models=FLAGS.models, steps=FLAGS.steps,
                             embedding_dim=FLAGS.embedding_dim, synthetic=FLAGS.synthetic,
                             num_calibration=FLAGS.num_calibration, latency_rounds=FLAGS.latency_rounds,
                             teacher_uint8=FLAGS.teacher_uint8, batch_size=FLAGS.batch_size,
                             log=lambda m: print(m, flush=True))
    except (ValueError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    print(open(os.path.join(FLAGS.output_dir, "results.md")).read())
    print(f"wrote {len(result['rows'])} rows to {os.path.join(FLAGS.output_dir, 'results.json')}")
