"""Prepare aligned 112x112 face TFRecord shards from an image-folder tree, a flat folder of unlabelled faces,
or an InsightFace RecordIO file. The `prepare` command over mobiface_tf.data.prepare.

  mobiface-prepare --input=PATH --output=DIR [--align=auto|mtcnn|none] [--shards=N] [--workers=N]
      [--exclude_pairs=pairs.txt --exclude_folds=1,2,3] [--exclude_names=list_name.txt]
      [--teacher=MODEL [--teacher_preprocess=raw]] [--unlabelled]
  mobiface-prepare --add_teacher=MODEL --output=DIR      # teacher embeddings into existing shards

PATH is `<identity>/<image>` folders, a flat folder of faces (--unlabelled), or a `.rec` next to its `.idx`.
Writes DIR/train-00000-of-000NN.tfrecord and DIR/manifest.json. Bad images are skipped with a reason in
manifest["skipped"]; num_images + len(skipped) equals the number of inputs. Restartable after a kill or Ctrl-C:
rerun the same command and finished shards are kept.
"""
from __future__ import annotations

import sys

from absl import app, flags

from mobiface_tf.images import DEFAULT_MAX_PIXELS
from mobiface_tf.outputs import check_output_dir
from mobiface_tf.data.prepare import prepare
from mobiface_tf.data.teacher_shards import add_teacher
from mobiface_tf.data.sources import RecordIOError

FLAGS = flags.FLAGS
flags.DEFINE_string("input", None, "Image-folder tree <identity>/<image>, a flat folder of faces with --unlabelled, "
                    "or a .rec file next to its .idx.")
flags.DEFINE_string("output", None, "Directory for the TFRecord shards and manifest.json.")
flags.DEFINE_enum("align", "auto", ["auto", "mtcnn", "none"],
                  "mtcnn: detect + warp to the ArcFace template; none: inputs are aligned 112x112 crops; "
                  "auto: none for 112x112 inputs, mtcnn otherwise.")
flags.DEFINE_integer("shards", None, "Number of shards (default: one per 10,000 inputs).", lower_bound=1)
flags.DEFINE_integer("workers", None, "Worker processes (default: CPU count).", lower_bound=1)
flags.DEFINE_integer("max_pixels", DEFAULT_MAX_PIXELS, "Refuse images above this many pixels, before decoding.",
                     lower_bound=1)
flags.DEFINE_integer("min_face_size", 20, "MTCNN minimum face size in pixels.", lower_bound=12)
flags.DEFINE_string("exclude_pairs", None, "LFW View 2 pairs.txt: leave out every person named in --exclude_folds "
                    "(the held-out LFW protocol).")
flags.DEFINE_string("exclude_names", None, "Names file, one person per line (e.g. cfp/Data/list_name.txt, with spaces): "
                    "leave those people out, whether their folders use spaces or underscores, in any case.")
flags.DEFINE_list("exclude_folds", None, "1-based folds of --exclude_pairs whose people are left out, e.g. 1,2,3.")
flags.DEFINE_bool("unlabelled", False, "--input is a flat folder of faces (or any tree): every image gets label 0. "
                  "For distillation alone (train with --margin=none).")
flags.DEFINE_string("teacher", None, "Teacher model (.tflite, .onnx, .keras or SavedModel): store its L2-normalised "
                    "embedding of each crop and of its mirror for knowledge distillation.")
flags.DEFINE_string("add_teacher", None, "Teacher model to add to the existing shards in --output, without "
                    "re-aligning (atomic and resumable, like the shards).")
flags.DEFINE_string("teacher_preprocess", None, "Pixel convention the teacher expects (mobiface_tf.embedder."
                    "PREPROCESS names; default: what the model states, else raw).")
flags.DEFINE_integer("teacher_threads", None, "LiteRT / onnxruntime threads for the teacher.", lower_bound=1)
flags.DEFINE_boolean("progress", True, "Show a progress bar.")


def main(argv):
    """CLI: write aligned TFRecord shards and manifest.json from --input (or add teacher embeddings to them).

    Returns None (exit 0); exits 2 with one "error: ..." line on bad input, missing or mismatched flags, an
    unwritable --output or a full disk (mobiface_tf.cli). Flags are defined at module level.
    """
    del argv
    try:
        if FLAGS.output:  # before any work: a folder that cannot be written fails now, not after the run
            check_output_dir(FLAGS.output, "--output")
        if FLAGS.add_teacher:
            if not FLAGS.output:
                raise app.UsageError("--add_teacher needs --output=DIR, the shard directory to extend")
            m = add_teacher(FLAGS.output, FLAGS.add_teacher, preprocess=FLAGS.teacher_preprocess,
                            num_threads=FLAGS.teacher_threads, progress=FLAGS.progress)
            t = m["teacher"]
            print(f"added teacher {t['file']} ({t['embedding_dim']}-d, {t['preprocess']}) to {m['num_images']} "
                  f"images in {FLAGS.output}: {t['images_per_s']:.1f} img/s (crop + mirror)")
            return
        if not FLAGS.input or not FLAGS.output:
            raise app.UsageError("--input and --output are required, e.g. --input=photos/ --output=data/train")
        if bool(FLAGS.exclude_pairs) != bool(FLAGS.exclude_folds):
            raise app.UsageError("--exclude_pairs and --exclude_folds go together, e.g. "
                                 "--exclude_pairs=lfw/pairs.txt --exclude_folds=1,2,3")
        folds = None
        if FLAGS.exclude_folds:
            try:
                folds = [int(f) for f in FLAGS.exclude_folds]
            except ValueError:
                raise app.UsageError(f"--exclude_folds must be integers, got {FLAGS.exclude_folds}")
        m = prepare(FLAGS.input, FLAGS.output, FLAGS.align, FLAGS.shards, FLAGS.workers, FLAGS.max_pixels,
                    FLAGS.min_face_size, FLAGS.progress, exclude_pairs=FLAGS.exclude_pairs, exclude_folds=folds,
                    unlabelled=FLAGS.unlabelled, teacher=FLAGS.teacher, teacher_preprocess=FLAGS.teacher_preprocess,
                    teacher_threads=FLAGS.teacher_threads, exclude_names=FLAGS.exclude_names)
    except (ValueError, RecordIOError, OSError) as e:  # bad input, a full disk: one line
        msg = e.strerror if isinstance(e, OSError) and e.strerror and not e.filename else e
        sys.exit(f"error: {msg}")
    print(f"wrote {m['num_images']} images of {m['num_classes']} classes in {len(m['shards'])} shards to "
          f"{FLAGS.output}; skipped {len(m['skipped'])} of {m['num_inputs']} inputs "
          f"(aligned by mtcnn: {m['aligned_by']['mtcnn']}, kept as crops: {m['aligned_by']['none']})"
          + (f"; rebuilt {len(m['rebuilt'])} shard(s) whose inputs changed: "
             + ", ".join(f"{r['shard']} ({r['reason']})" for r in m["rebuilt"]) if m.get("rebuilt") else ""))
    if m.get("excluded"):
        e = m["excluded"]
        print(f"excluded {e['num_images']} images of {e['num_identities']} people in folds {e['folds']} of "
              f"{e['pairs']}")
    if m.get("excluded_names"):
        e = m["excluded_names"]
        print(f"excluded {e['num_images']} images of {e['num_identities']} people listed in {e['names_file']} "
              f"({e['people_in_file']} names; manifest.json lists them)")
    if m.get("teacher"):
        t = m["teacher"]
        print(f"teacher {t['file']}: {t['embedding_dim']}-d, {t['images_per_s']:.1f} img/s (crop + mirror)")
