"""One distillation training set from several face datasets, leaving out every person scored later, by name.
A thin CLI over mobiface_tf.data.multisource.

  python tools/prepare_multisource.py --output=runs/multi \
      --source=lfw:../shared/data/lfw/lfw-112x112:none \
      --source=glint:../shared/data/glint_sample:none \
      --source=celeba:../shared/data/celeba_small:mtcnn \
      --lfw_pairs=../shared/data/lfw/pairs.txt --lfw_folds=1,2,3 \
      --exclude_names=../shared/data/cfp/Data/list_name.txt [--teacher=MODEL]

Each --source is NAME:FOLDER:ALIGN (ALIGN: auto, mtcnn or none). Writes OUTPUT/<NAME>/ shards (manifest.json:
what was skipped and why, who was left out), OUTPUT/excluded_names.txt and OUTPUT/sources.json. Train with
--data='OUTPUT/*/train-*.tfrecord' --margin=none.
"""
from __future__ import annotations

import sys

from mobiface_tf import quiet  # first: TensorFlow's start-up log is filtered out unless --verbose

quiet.install(sys.argv)

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("source", None, "NAME:FOLDER:ALIGN, one per dataset (ALIGN: auto, mtcnn or none).")
flags.DEFINE_string("output", None, "Folder for OUTPUT/<NAME>/ shards and sources.json.")
flags.DEFINE_string("lfw_pairs", None, "LFW View 2 pairs.txt whose --lfw_folds people are left out of every source.")
flags.DEFINE_list("lfw_folds", None, "1-based folds of --lfw_pairs, e.g. 1,2,3.")
flags.DEFINE_multi_string("exclude_names", None, "Names file(s), one person per line (e.g. cfp/Data/list_name.txt).")
flags.DEFINE_string("teacher", None, "Optional teacher model: store its embeddings (precomputed distillation).")
flags.DEFINE_integer("workers", None, "Worker processes per source (default: CPU count).", lower_bound=1)
flags.DEFINE_boolean("progress", True, "Show progress bars.")


def _sources(specs):
    from mobiface_tf.data.multisource import Source

    out = []
    for spec in specs or []:
        parts = spec.split(":")
        if len(parts) != 3 or parts[2] not in ("auto", "mtcnn", "none"):
            raise ValueError(f"--source={spec!r}: expected NAME:FOLDER:ALIGN with ALIGN auto, mtcnn or none")
        out.append(Source(*parts))
    if not out:
        raise ValueError("give at least one --source=NAME:FOLDER:ALIGN")
    return out


def main(argv):
    """CLI: build the sources; exits 2 with one "error: ..." line on bad input."""
    del argv
    from mobiface_tf.data.multisource import build_multisource

    try:
        if not FLAGS.output:
            raise ValueError("--output is required")
        if bool(FLAGS.lfw_pairs) != bool(FLAGS.lfw_folds):
            raise ValueError("--lfw_pairs and --lfw_folds go together, e.g. --lfw_pairs=lfw/pairs.txt "
                             "--lfw_folds=1,2,3")
        folds = [int(f) for f in FLAGS.lfw_folds] if FLAGS.lfw_folds else None
        rec = build_multisource(_sources(FLAGS.source), FLAGS.output, FLAGS.lfw_pairs, folds,
                                FLAGS.exclude_names or (), FLAGS.teacher, FLAGS.workers, FLAGS.progress)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for s in rec["sources"]:
        print(f"{s['name']}: {s['num_images']} images of {s['num_classes']} people; left out "
              f"{s['excluded']['num_images']} images of {s['excluded']['num_identities']} scored people; skipped "
              f"{s['skipped']}" + (f" ({s['note']})" if s.get("note") else ""))
    print(f"{rec['num_people_scored']} people scored later; see {FLAGS.output}/sources.json")
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
