"""What int8 costs a trained student, measured over several calibration sets: for each activation-range method
and each of --seeds random sets of calibration faces, export full int8, measure parity (Keras vs TFLite cosine)
on other training faces, and score held-out LFW folds. One held-out figure moves by several tenths of a point
when the embedding barely changes, so the mean and spread over calibration sets are what to compare.

    python tools/research/int8_study.py --model=runs/distill/mobiface_gdc/embedding.keras --data=runs/distill/data \
        --lfw_dir=../shared/data/lfw/lfw-112x112 --pairs=../shared/data/lfw/pairs.txt --folds=1,2,3 \
        --seeds=4 --output_dir=runs/int8_study

Writes OUTPUT_DIR/study.json (one row per method and seed, plus the Keras accuracy and a summary per method) and
prints the summary. Resumable: a row already in study.json is not redone.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from mobiface_tf import quiet

quiet.install(sys.argv)

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "trained embedding model (.keras)", required=True)
flags.DEFINE_string("data", None, "training shards or image folder: calibration and parity faces", required=True)
flags.DEFINE_string("lfw_dir", None, "LFW-style images for the held-out score", required=True)
flags.DEFINE_string("pairs", None, "LFW View 2 pairs.txt", required=True)
flags.DEFINE_list("folds", ["1", "2", "3"], "held-out folds (1-based)")
flags.DEFINE_list("methods", ["mse", "minmax"], "activation-range methods (export.ACTIVATION_RANGES)")
flags.DEFINE_integer("seeds", 4, "calibration sets per method (seeds 0..N-1)", lower_bound=1)
flags.DEFINE_integer("num_calibration", 200, "faces per calibration set", lower_bound=1)
flags.DEFINE_integer("num_parity", 64, "parity faces (one fixed set, seed 1000)", lower_bound=1)
flags.DEFINE_string("output_dir", None, "study.json and the .tflite files go here", required=True)


def main(argv):
    """CLI: run the study (see the module docstring); exits 1 with one line on bad input."""
    import keras
    import numpy as np

    from mobiface_tf.export.convert import ACTIVATION_RANGES
    from mobiface_tf.export.faces import load_faces
    from mobiface_tf.atomic import write_json_atomic
    from mobiface_tf.export.pipeline import export
    from mobiface_tf.compare import heldout_accuracy

    if len(argv) > 1:
        sys.exit(f"error: unexpected arguments {argv[1:]}")
    unknown = [m for m in FLAGS.methods if m not in ACTIVATION_RANGES]
    if unknown:
        sys.exit(f"error: unknown --methods {unknown}; expected some of {list(ACTIVATION_RANGES)}")
    folds = [int(f) for f in FLAGS.folds]
    out = Path(FLAGS.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "study.json"
    study = json.loads(path.read_text()) if path.is_file() else {"rows": []}
    if study.get("model") not in (None, str(FLAGS.model)):
        sys.exit(f"error: {path} belongs to {study['model']}; use another --output_dir")
    study["model"] = str(FLAGS.model)
    model = keras.models.load_model(FLAGS.model, compile=False)
    if "keras_accuracy" not in study:
        study["keras_accuracy"] = heldout_accuracy(FLAGS.model, FLAGS.lfw_dir, FLAGS.pairs, folds, threads=2)["accuracy"]
    parity_faces = load_faces(FLAGS.data, FLAGS.num_parity, seed=1000)
    done = {(r["method"], r["seed"]) for r in study["rows"]}
    for method in FLAGS.methods:
        for seed in range(FLAGS.seeds):
            if (method, seed) in done:
                continue
            calib = load_faces(FLAGS.data, FLAGS.num_calibration, seed=seed)
            tfl = out / f"int8_{method}_seed{seed}.tflite"
            report = export(model, tfl, "int8", calib, parity_faces, enforce=False, activation_ranges=method)
            acc = heldout_accuracy(tfl, FLAGS.lfw_dir, FLAGS.pairs, folds, threads=2)["accuracy"]
            row = {"method": method, "seed": seed, "heldout_accuracy": acc,
                   "accuracy_drop_vs_keras": study["keras_accuracy"] - acc,
                   "parity_cosine_mean": report["parity"]["cosine_mean"],
                   "parity_cosine_min": report["parity"]["cosine_min"]}
            print(json.dumps(row), flush=True)
            study["rows"].append(row)
            write_json_atomic(path, study, indent=2)
    summary = {}
    for method in FLAGS.methods:
        rows = [r for r in study["rows"] if r["method"] == method]
        drops = np.array([r["accuracy_drop_vs_keras"] for r in rows])
        summary[method] = {"seeds": len(rows), "drop_mean_pt": round(100 * float(drops.mean()), 3),
                           "drop_std_pt": round(100 * float(drops.std(ddof=1)), 3) if len(rows) > 1 else None,
                           "drop_max_pt": round(100 * float(drops.max()), 3),
                           "parity_cosine_mean": round(float(np.mean([r["parity_cosine_mean"] for r in rows])), 5)}
        print(f"{method}: int8 loses {summary[method]['drop_mean_pt']:+.2f} pt on average over {len(rows)} "
              f"calibration sets (sd {summary[method]['drop_std_pt']}, worst {summary[method]['drop_max_pt']:+.2f}); "
              f"mean parity cosine {summary[method]['parity_cosine_mean']}")
    study["summary"] = summary
    write_json_atomic(path, study, indent=2)


if __name__ == "__main__":
    quiet.define_verbose_flag()
    app.run(main)
