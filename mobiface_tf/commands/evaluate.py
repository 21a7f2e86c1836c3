"""Face verification on LFW View 2 (pairs.txt), CFP (FF/FP) and/or an InsightFace .bin, 10-fold protocol.

    mobiface-evaluate --model=../shared/data/models/mobilefacenet_insightface_fp32.tflite \
        --lfw_dir=../shared/data/lfw/lfw-112x112 --pairs=../shared/data/lfw/pairs.txt --flip
    mobiface-evaluate --model=MODEL --cfp_dir=../shared/data/cfp --cfp_protocol=FF,FP --flip

Prints accuracy ± std, the threshold and TAR@FAR; writes a JSON report, an ROC PNG and the threshold
sidecar (<model>.eval.json) that the verify/identify CLIs read.
"""
import logging
import sys
from pathlib import Path

from absl import app, flags

from mobiface_tf import embedder as embedder_lib
from mobiface_tf import evaluate as ev
from mobiface_tf.atomic import write_json_atomic
from mobiface_tf.sidecar import MIN_PAIRS_PER_KIND
from mobiface_tf.outputs import check_output_file, is_png_file, json_report

REPORT_IS_OURS = json_report("num_pairs", "num_positive", "num_negative")  # every report of evaluate has these

FLAGS = flags.FLAGS
DEFAULT_DIR = "eval_out"  # default folder of the report, ROC and (read-only model folder) sidecar; in .gitignore
flags.DEFINE_string("model", None, ".keras file, SavedModel directory, .tflite or .onnx file", required=True)
flags.DEFINE_string("lfw_dir", None, "LFW images <Name>/<Name>_NNNN.jpg (with --pairs)")
flags.DEFINE_string("pairs", None, "LFW View 2 pairs.txt (with --lfw_dir)")
flags.DEFINE_string("bin", None, "InsightFace verification .bin (read with a restricted unpickler)")
flags.DEFINE_string("cfp_dir", None, "CFP root (Protocol/ and Data/): score its official 10-fold protocol(s); photos are "
                    "aligned by MTCNN to the ArcFace template and cached in --align_cache")
flags.DEFINE_list("cfp_protocol", ["FP"], "CFP protocol(s) with --cfp_dir: FF (frontal-frontal), FP (frontal-profile), "
                  "or FF,FP (photos shared by both are aligned and embedded once)")
flags.DEFINE_string("align_cache", None, "folder of cached aligned crops, keyed by photo content and aligner settings "
                    "(default: $XDG_CACHE_HOME or ~/.cache, /mobiface_tf/aligned)")
flags.DEFINE_bool("flip", False, "flip test: embed image + mirror, sum, L2-normalise")
flags.DEFINE_bool("realign", False, "re-align every image with MTCNN to the ArcFace template before embedding")
flags.DEFINE_string("output", None, f"JSON report path (default: {DEFAULT_DIR}/eval_<model name>.json; "
                    f"{DEFAULT_DIR}/ is git-ignored, so a run from the repo root leaves no untracked files)")
flags.DEFINE_string("roc_png", None, "ROC curve PNG path (default: the report path with .roc.png)")
flags.DEFINE_enum("preprocess", None, sorted(embedder_lib.PREPROCESS), "input convention the model expects "
                  "(default: what the model states, e.g. an ONNX model's metadata, else raw)")
flags.DEFINE_list("folds", None, "score only these 1-based folds of --pairs or --cfp_dir (e.g. the held-out LFW protocol, 1,2,3): "
                  "cross-validation restricted to them, each threshold fit on the other listed folds")
flags.DEFINE_integer("batch_size", 64, "images per forward pass", lower_bound=1)
flags.DEFINE_integer("num_threads", None, "TFLite interpreter threads (default: LiteRT's choice)", lower_bound=1)
flags.DEFINE_bool("write_sidecar", True, "write the threshold next to the model (<model>.eval.json)")
flags.DEFINE_bool("progress", True, "show a progress bar")


def _summary(name, report):
    if report.get("accuracy") is None:  # a set without both kinds of pair: the rate alone, and why
        rate = "true_accept_rate" if "true_accept_rate" in report else "true_reject_rate"
        return (f"{name}: {rate.replace('_', ' ')} {report[rate]:.4f} over {report['num_pairs']} pairs; no accuracy "
                f"or threshold: {report['one_sided']}")
    extra = f", AUC {report['auc']:.4f}, EER {report['eer']:.4f}" if "auc" in report else ""
    if "align" in report and report["align"]["cache"]:
        extra += (f"; MTCNN found no face in {report['align']['no_face_images']} photos ({report['align']['no_face_pairs']}"
                  " pairs scored on the centre-square fallback)")
    tars = ", ".join(f"FAR={k}: " + (f"{v:.4f}" if v is not None else "n/a") for k, v in report["tar_at_far"].items())
    return (f"{name}: accuracy {report['accuracy']:.4f} ± {report['accuracy_std']:.4f} over {report['num_pairs']} pairs "
            f"({report.get('num_folds', 10)}-fold), threshold {report['threshold']:.4f}; TAR@{tars}{extra}")


def _bin_roc_png(roc_png: Path) -> Path:
    """Where the .bin ROC goes when LFW's takes `roc_png`."""
    return roc_png.with_name(roc_png.stem.replace(".roc", "") + ".bin.roc.png")


def _evaluate():
    if not FLAGS.bin and not FLAGS.cfp_dir and not (FLAGS.lfw_dir and FLAGS.pairs):
        raise app.UsageError("give --lfw_dir and --pairs (LFW View 2), --cfp_dir=DIR (CFP), and/or --bin=FILE")
    if FLAGS.cfp_dir:  # checked before any model or MTCNN is loaded
        from mobiface_tf.data.verification import check_protocol, read_cfp_pairs

        for protocol in FLAGS.cfp_protocol:
            read_cfp_pairs(FLAGS.cfp_dir, check_protocol(protocol))
    if bool(FLAGS.lfw_dir) != bool(FLAGS.pairs):
        raise app.UsageError(f"--lfw_dir ({FLAGS.lfw_dir!r}) and --pairs ({FLAGS.pairs!r}) go together")
    model_path = Path(FLAGS.model)
    # Every output is checked before the model is loaded: a folder or an unwritable place fails now, in one line.
    # An existing report or chart is replaced only when it is recognisably evaluate's own (never a user's file).
    output = check_output_file(FLAGS.output or Path(DEFAULT_DIR) / f"eval_{model_path.name}.json", "--output",
                               example="eval.json", ours=REPORT_IS_OURS, what="an evaluate report")
    roc_png = check_output_file(FLAGS.roc_png or output.with_suffix(".roc.png"), "--roc_png" if FLAGS.roc_png else
                                "--output (its ROC PNG)", example="roc.png", ours=is_png_file, what="a PNG chart")
    if FLAGS.bin and (FLAGS.pairs or FLAGS.cfp_dir):
        check_output_file(_bin_roc_png(roc_png), "--roc_png (the .bin ROC PNG)", example="roc.png", ours=is_png_file,
                          what="a PNG chart")
    for protocol in FLAGS.cfp_protocol if FLAGS.cfp_dir else ():
        check_output_file(roc_png.with_name(roc_png.name.replace(".roc.png", f".cfp_{protocol.lower()}.roc.png")),
                          "--roc_png (its CFP ROC PNG)", example="roc.png", ours=is_png_file, what="a PNG chart")

    emb = embedder_lib.load_embedder(model_path, FLAGS.preprocess, FLAGS.batch_size, FLAGS.num_threads)
    aligner = None
    if FLAGS.realign:
        from mobiface_tf.align import FaceAligner  # MTCNN is heavy: only load it when asked

        aligner = FaceAligner()
    meta = dict(model=str(model_path), preprocess=emb.preprocess,
                protocol="10-fold: threshold fit on 9 folds, accuracy on the held-out fold (pairs.txt: the LFW "
                         "View 2 folds; CFP: its official Split folds; .bin: 10 contiguous folds, as InsightFace splits "
                         "them)")

    reports = {}
    try:
        folds = [int(f) for f in FLAGS.folds] if FLAGS.folds else None
    except ValueError:
        raise ValueError(f"--folds must be 1-based fold numbers such as 1,2,3, got {FLAGS.folds}") from None
    if FLAGS.pairs:
        report, scores, issame = ev.evaluate_lfw(emb, FLAGS.pairs, FLAGS.lfw_dir, FLAGS.flip, aligner, folds=folds,
                                                 progress=FLAGS.progress, **meta)
        dataset = f"{Path(FLAGS.lfw_dir).name} ({Path(FLAGS.pairs).name}, {report.get('num_folds', 10)} folds)"
        report["roc_png"] = str(ev.save_roc_png(scores, issame, roc_png, f"{model_path.name} on {dataset}"))
        reports["lfw"] = report
    if FLAGS.cfp_dir:
        from mobiface_tf.evaluate_cfp import cfp_reports

        reports.update(cfp_reports(emb, FLAGS.cfp_dir, FLAGS.cfp_protocol, FLAGS.flip, FLAGS.align_cache, folds,
                                   roc_png, model_path.name, FLAGS.progress, **meta))
    if FLAGS.bin:
        report, scores, issame = ev.evaluate_bin(emb, FLAGS.bin, FLAGS.flip, aligner, progress=FLAGS.progress, **meta)
        png = roc_png if not reports else _bin_roc_png(roc_png)
        report["roc_png"] = str(ev.save_roc_png(scores, issame, png, f"{model_path.name} on {Path(FLAGS.bin).name}"))
        reports["bin"] = report

    # The first dataset given (LFW when present) is the report's top level and the sidecar's source.
    primary_name = next(iter(reports))
    final = dict(reports[primary_name])
    for name, rep in reports.items():
        if name != primary_name:
            final[name] = rep
        print(_summary(name, rep))
    if FLAGS.write_sidecar and final.get("threshold") is None:
        print(f"warning: no threshold sidecar written: {final['one_sided']}", file=sys.stderr)
        final["sidecar"] = None
    elif FLAGS.write_sidecar:
        written = ev.write_sidecar(model_path, final, fallback_dir=output.parent)
        final["sidecar"] = str(written) if written else None
        if written is None:
            logging.warning("threshold sidecar not written anywhere; pass --threshold=%.4f to the CLIs", final["threshold"])
        elif written != ev.sidecar_path(model_path):
            print(f"note: {model_path.parent} is not writable; threshold sidecar written to {written} "
                  f"(pass --threshold={final['threshold']:.4f} to the verify/identify CLIs)")
        few = min(final["num_positive"], final["num_negative"])
        if written is not None and few < MIN_PAIRS_PER_KIND:
            print(f"warning: the threshold in {written} was fit on {final['num_positive']} same and "
                  f"{final['num_negative']} different pairs, fewer than {MIN_PAIRS_PER_KIND} of each: verify and "
                  f"identify will not use it (pass --threshold={final['threshold']:.4f} to use it anyway)",
                  file=sys.stderr)
    write_json_atomic(output, final, indent=2)  # a temp file renamed into place: a full disk keeps the old report
    print(f"report: {output}  roc: {final['roc_png']}")
    return 0


def main(argv):
    """CLI: score --model on LFW View 2 pairs and/or a .bin, writing the report, ROC PNG and threshold sidecar.

    Returns 0; bad input (missing flags, an output that cannot be written, a bad model or data set) raises, and
    mobiface_tf.cli prints one "error: ..." line and exits 2. Flags are defined at module level.
    """
    del argv
    return _evaluate()
