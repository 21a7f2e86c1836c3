"""Export a face-embedding model to TFLite (batch 1) with a parity report on real faces.

    mobiface-to-tflite --backbone=mobiface_gdc --output=/tmp/mobiface_gdc_int8.tflite --quantize=int8 \
        --calibration=../shared/data/lfw/lfw-112x112
    mobiface-to-tflite --model=runs/x/embedding.keras --output=model.tflite --quantize=float16 \
        --parity_images=../shared/data/lfw/lfw-112x112

Writes OUTPUT and OUTPUT.parity.json (cosine Keras vs TFLite on real faces: min and mean, plus the
mode, size, ops and XNNPACK partitions). fp32 must reach min cosine >= 0.9999 and fp16 >= 0.999, or
the command fails; int8 is reported (aim: mean >= 0.98). A --backbone (random init) first gets
its BatchNorm statistics re-estimated on the faces (export.calibrate_batchnorm); a --model does not.

Never in place: the new model is written to a temporary file beside OUTPUT and parity is measured on it; only a
model that passes replaces OUTPUT (and drops the old model's threshold sidecar). A failed check or a full disk
leaves OUTPUT, its report and its sidecar untouched; the failed file is kept as OUTPUT.failed. An existing OUTPUT
that is not a TFLite model is never replaced.
"""
import sys
import time
from pathlib import Path

from absl import flags

from mobiface_tf.outputs import check_output_file, is_tflite_file, json_report

FLAGS = flags.FLAGS
flags.DEFINE_bool("progress", True, "print a timed line on stderr as each step starts (--noprogress: off)")
flags.DEFINE_string("model", None, "trained embedding model (.keras) to export")
flags.DEFINE_string("backbone", None, "instead of --model: a fresh random-init network, a zoo name (e.g. mobiface_gdc) "
                    "or a builder name (mobiface, mobilefacenet, mobilenet_v1) with --head/--embedding_dim")
flags.DEFINE_enum("head", None, ["fc", "gdc", "gap"], "head for --backbone (a zoo name fixes its own)")
flags.DEFINE_integer("embedding_dim", None, "embedding size for --backbone (overrides a zoo name's)", lower_bound=1)
flags.DEFINE_string("output", None, "output .tflite path", required=True)
flags.DEFINE_enum("quantize", "none", ["none", "float16", "dynamic", "int8"], "conversion mode")
flags.DEFINE_string("calibration", None, "int8 representative set: directory of aligned face images or TFRecord glob")
flags.DEFINE_integer("num_calibration", 100, "images used for int8 calibration", lower_bound=100)
flags.DEFINE_bool("allow_few_calibration", False, "accept a --calibration set with fewer than --num_calibration "
                  "faces (activation ranges from few faces may clip others)")
flags.DEFINE_enum("int8_io", "float", ["float", "int8"], "int8 mode: float32 or int8 model input/output")
flags.DEFINE_enum("activation_ranges", "mse", ["mse", "observed", "minmax"],
                  "int8 activation ranges: mse = the least quantisation error on the calibration faces (default), "
                  "observed = their exact min/max, minmax = the converter's own calibration (see README, int8)")
flags.DEFINE_string("parity_images", None, "real aligned faces for the parity report (image dir or TFRecord glob; "
                    "default: --calibration)")
flags.DEFINE_integer("num_parity", 50, "faces used for the parity report", lower_bound=1)
flags.DEFINE_enum("prelu_rewrite", "auto", ["auto", "on", "off"],
                  "rewrite PReLU into XNNPACK-delegated ops (auto: int8 only)")
flags.DEFINE_integer("seed", 0, "random init seed for --backbone")
flags.DEFINE_integer("bn_calibration_steps", 4, "--backbone only: re-estimate the random-init BN statistics on "
                     "the calibration (else parity) faces with this many forward passes, so activations are "
                     "O(1) as in a trained network (0: off). Never applied to --model", lower_bound=0)


def _build_model():
    import keras

    if bool(FLAGS.model) == bool(FLAGS.backbone):
        raise ValueError("pass exactly one of --model=PATH.keras or --backbone=NAME")
    if FLAGS.model:
        path = Path(FLAGS.model)
        if not path.is_file():
            raise ValueError(f"--model={FLAGS.model!r} does not exist; pass a .keras file written by training")
        return keras.models.load_model(path, compile=False)
    from mobiface_tf.models.zoo import build_config

    keras.utils.set_random_seed(FLAGS.seed)
    try:  # the one network resolver (models.zoo.resolve): unknown names and a contradicting --head fail here
        return build_config(FLAGS.backbone, head=FLAGS.head, embedding_dim=FLAGS.embedding_dim)
    except ValueError as e:
        raise ValueError(f"--backbone={FLAGS.backbone!r}: {e}") from None


def _step(t0: float, message: str) -> None:
    """A progress line on stderr (the conversion is ~40 s of silence otherwise); --noprogress turns them off."""
    if FLAGS.progress:
        print(f"[{time.perf_counter() - t0:5.1f} s] {message}", file=sys.stderr, flush=True)


def main(argv):
    """CLI: export --model or a fresh --backbone to --output .tflite and write its parity report beside it.

    Returns None (exit 0); exits 2 with one "error: ..." line on bad input, an output that cannot be written
    (checked first) or failed parity (mobiface_tf.cli). Flags are defined at module level.
    """
    del argv
    t0 = time.perf_counter()
    # Before TensorFlow and the model load: where the files go must be writable (ValueError: one line, exit 2).
    # Only a TFLite model, and to_tflite's own parity report, are ever replaced (never a .keras or a user's file).
    check_output_file(FLAGS.output, "--output", example="model.tflite", ours=is_tflite_file, what="a TFLite model")
    check_output_file(f"{FLAGS.output}.parity.json", "--output (its parity report)",
                      ours=json_report("tflite", "quantize"), what="a to_tflite parity report")
    _step(t0, "loading TensorFlow and the model")
    from mobiface_tf.export.batchnorm import calibrate_batchnorm
    from mobiface_tf.export.faces import load_calibration_faces, load_faces
    from mobiface_tf.export.parity import ParityError
    from mobiface_tf.export.pipeline import export

    try:
        if FLAGS.quantize == "int8" and not FLAGS.calibration:
            raise ValueError("--quantize=int8 needs --calibration=DIR or TFRecord glob of real aligned faces")
        _step(t0, "reading calibration / parity faces")
        calib = load_calibration_faces(FLAGS.calibration, FLAGS.num_calibration, FLAGS.allow_few_calibration) \
            if FLAGS.quantize == "int8" else None
        model = _build_model()
        source = FLAGS.parity_images or FLAGS.calibration
        if not source:
            raise ValueError("the parity report needs real faces: pass --parity_images=DIR (e.g. "
                             "../shared/data/lfw/lfw-112x112) or --calibration")
        faces = load_faces(source, FLAGS.num_parity, seed=1)
        if FLAGS.backbone and FLAGS.bn_calibration_steps:
            # A random-init network's activations vanish through its layers and int8 rounds them to zero;
            # a trained one's BN layers normalise them. A --model is trained: its statistics stay as saved.
            bn_faces = calib if calib is not None else load_faces(source, FLAGS.num_calibration)
            calibrate_batchnorm(model, bn_faces, steps=FLAGS.bn_calibration_steps)
        rewrite = {"auto": None, "on": True, "off": False}[FLAGS.prelu_rewrite]
        _step(t0, f"converting to TFLite ({FLAGS.quantize}) and measuring parity on {len(faces)} faces "
                  "(tens of seconds on a CPU)")
        report = export(model, FLAGS.output, FLAGS.quantize, calib, faces, FLAGS.int8_io, rewrite=rewrite,
                           activation_ranges=FLAGS.activation_ranges)
    except (ValueError, FileNotFoundError, ParityError) as e:
        sys.exit(f"error: {e}")
    _step(t0, "done")
    p = report["parity"]
    print(f"wrote {FLAGS.output} ({report['size_bytes'] / 1e6:.2f} MB, {FLAGS.quantize}, "
          f"{report['partitions']} XNNPACK partition(s), undelegated: {report['undelegated_ops'] or 'none'})")
    print(f"parity on {p['num_images']} faces: cosine min {p['cosine_min']:.6f} mean {p['cosine_mean']:.6f} "
          f"({p['threshold']}); report: {FLAGS.output}.parity.json")
