"""Open-set identification on celeba_small with and without the near-duplicate fix (issue 25).

    nice -n 5 python tools/research/open_set_celeba.py \
        --model=../shared/data/models/mobilefacenet_insightface_fp32.tflite [--far=1e-3] [--out=runs/open_set_celeba]

Protocol: people of ../shared/data/celeba_small with >= 3 photos are enrolled with their first 2 photos (file
name order); their other photos are genuine queries. People with exactly 1 photo are strangers (queries that
are not enrolled). Every photo goes through identify's normal path: MTCNN alignment (mobiface_tf.align) and
the model, via mobiface_tf.gallery.enroll, whose index files (one per set, under --out) cache the embeddings,
so a rerun only re-hashes the photos. The photos are copied under --out (identity folders as enroll expects).

Then, at --far, the threshold is set two ways from the gallery's own impostor scores:
  * before: mobiface_tf.identify.far_threshold_naive (every impostor score, the (k+1)-th highest);
  * after:  mobiface_tf.open_set (flagged near-duplicate pairs out, tail estimate when too few scores).
and the script reports rank-1, the share of genuine queries accepted as the right person, the share of
strangers rejected, and the flagged pairs, with a montage PNG of the top pairs (--montage).
One process; the model runs on the CPU.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "../shared/data/models/mobilefacenet_insightface_fp32.tflite", "Embedding model.")
flags.DEFINE_string("data", "../shared/data/celeba_small", "celeba_small: <identity>/<photo>.jpg")
flags.DEFINE_string("out", "runs/open_set_celeba", "Work folder: photo copies, enrolment indexes, results.")
flags.DEFINE_float("far", 1e-3, "Per-query false-accept rate for the threshold.")
flags.DEFINE_integer("enrolled", 2, "Photos enrolled per person (people with >= enrolled + 1 photos).")
flags.DEFINE_string("montage", None, "Write a montage PNG of the top flagged pairs here.")
flags.DEFINE_integer("montage_pairs", 10, "Pairs in the montage: the flagged ones, or the closest when none is.")
flags.DEFINE_integer("inject", 20, "Single-duplicate trials: the first N people with >= 2 query photos, "
                     "each enrolled a second time from 2 of their query photos, one at a time.")
flags.DEFINE_boolean("aligned", False, "--data holds already aligned 112x112 crops (celeba_small_112, LFW-112): skip "
                     "MTCNN, as identify --aligned does. The figures are then those of the model alone.")
flags.DEFINE_string("json_out", None, "Write the figures as JSON here (default OUT/<model stem>.json).")


def split_people(data: Path, enrolled: int) -> dict[str, dict[str, list[Path]]]:
    """{"gallery": {id: photos}, "queries": {id: photos}, "strangers": {id: [photo]}} by file name order."""
    sets = {"gallery": {}, "queries": {}, "strangers": {}}
    for d in sorted(p for p in data.iterdir() if p.is_dir()):
        photos = sorted(p for p in d.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if len(photos) > enrolled:
            sets["gallery"][d.name] = photos[:enrolled]
            sets["queries"][d.name] = photos[enrolled:]
        elif len(photos) == 1:
            sets["strangers"][d.name] = photos
    return sets


def materialise(sets: dict, out: Path) -> dict[str, Path]:
    """Copy each set's photos to OUT/photos/<set>/<id>/<photo> (skipped when already there)."""
    roots = {}
    for name, people in sets.items():
        root = out / "photos" / name
        for pid, photos in people.items():
            (root / pid).mkdir(parents=True, exist_ok=True)
            for p in photos:
                dst = root / pid / p.name
                if not dst.exists():
                    shutil.copyfile(p, dst)
        roots[name] = root
    return roots


def main(argv):
    del argv
    from mobiface_tf.align import FaceAligner
    from mobiface_tf.faces import load_model
    from mobiface_tf.gallery import enroll, model_key

    out = Path(FLAGS.out)
    sets = split_people(Path(FLAGS.data), FLAGS.enrolled)
    print({k: (len(v), sum(map(len, v.values()))) for k, v in sets.items()}, file=sys.stderr)
    roots = materialise(sets, out)
    embedder = load_model(FLAGS.model)
    aligner = None if FLAGS.aligned else FaceAligner()
    key = model_key(FLAGS.model, embedder, FLAGS.aligned)
    stem = Path(FLAGS.model).stem
    galleries = {}
    for name, root in roots.items():
        galleries[name] = enroll(root, embedder, key, out / f"{stem}.{name}.npz", aligner, progress=True,
                                 warn=lambda m: None)
        g = galleries[name]
        print(f"{name}: {g.summary()}", file=sys.stderr)
    from open_set_report import report  # noqa: E402 (next to this script)
    report(galleries, FLAGS, stem, out)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    app.run(main)
