"""Import a published MobileFaceNet (.tflite or NCHW .onnx) into the project's Keras network, exactly or not at all.

    mobiface-import-model --source=../shared/data/models/mobilefacenet_insightface_fp32.tflite \
        --backbone=mobilefacenet --output=mobilefacenet_imported.keras --check_faces=../shared/data/lfw/lfw-112x112
    python -m mobiface_tf.import_model ... / python tools/import_model.py ...   (the same)

Writes OUTPUT (a .keras embedding model taking raw RGB 0-255, like every model of the project) and
OUTPUT.import.json (the mapping and the parity check). The imported network is checked against the source
run by its own runtime (LiteRT / onnxruntime) on --check_faces (else synthetic images): each image's cosine
must reach --min_cosine (0.9999), or nothing is written. A graph that does not fit the project's network is
refused with one line naming the first layer that differs. Exit 2 with one "error: ..." line on either.
OUTPUT is written to a temporary file beside it (missing folders created) and renamed over it only when whole; an
existing OUTPUT that is not a Keras model, or a report that is not import_model's, is never replaced.
"""
from __future__ import annotations

import sys
from pathlib import Path

from absl import flags

from mobiface_tf.atomic import atomic_path, write_json_atomic
from mobiface_tf.outputs import check_output_file, is_keras_file, json_report

FLAGS = flags.FLAGS


def define_flags():
    """Flags are defined only when run as a program (or by tools/import_model.py), never on import."""
    from mobiface_tf.embedder import PREPROCESS
    from mobiface_tf.importer import BACKBONES, MIN_COSINE

    flags.DEFINE_string("source", None, "published network: a float .tflite or an NCHW .onnx MobileFaceNet")
    flags.DEFINE_enum("backbone", "mobilefacenet", list(BACKBONES), "the project's network to map onto")
    flags.DEFINE_integer("embedding_dim", None, "expected embedding size (default: the source's; a different one "
                         "is refused)", lower_bound=1)
    flags.DEFINE_string("output", None, "the .keras file to write")
    flags.DEFINE_enum("source_preprocess", None, sorted(PREPROCESS), "what the source file expects to be fed "
                      "(default: what the file states, e.g. ONNX metadata, else raw RGB 0-255)")
    flags.DEFINE_string("check_faces", None, "aligned face crops (image dir or TFRecord glob) for the parity check "
                        "(default: synthetic images)")
    flags.DEFINE_integer("num_check", 16, "images in the parity check", lower_bound=1)
    flags.DEFINE_float("min_cosine", MIN_COSINE, "least per-image cosine with the source that is accepted")
    flags.DEFINE_string("bn_faces", None, "aligned face crops (image dir or TFRecord glob): give the BN layers that "
                        "hold a folded BN these faces' statistics, same inference function (for fine-tuning)")
    flags.DEFINE_integer("num_bn_faces", 200, "faces for --bn_faces", lower_bound=1)


def _check_paths(source: str, output: str) -> Path:
    if not source or not output:
        raise ValueError("give --source=FILE (.tflite or .onnx) and --output=OUT.keras")
    if not Path(source).is_file():
        raise ValueError(f"--source={source!r} does not exist; pass a .tflite or .onnx MobileFaceNet")
    out = Path(output)
    if out.suffix != ".keras":
        raise ValueError(f"--output={output!r} must end in .keras (Keras' own format)")
    if out.is_dir():
        raise ValueError(f"--output={output!r} is a directory; pass a file name ending in .keras")
    # Only a Keras model (and our own report) is ever replaced: checked before the import, in one line.
    check_output_file(out, "--output", example="model.keras", ours=is_keras_file, what="a Keras model (.keras)")
    check_output_file(f"{out}.import.json", "--output (its import report)", ours=json_report("source", "format"),
                      what="an import_model report")
    return out


def run(source, output, backbone="mobilefacenet", embedding_dim=None, source_preprocess=None, check_faces=None,
        num_check=16, min_cosine=None, bn_faces=None, num_bn_faces=200) -> dict:
    """Import `source`, check it, and write `output` (+ `output`.import.json) atomically. Returns the report.

    Raises ValueError for bad input and importer.ImportRefused (a ValueError) when the graph does not fit or
    parity fails; in both cases nothing is written.
    """
    from mobiface_tf import importer

    out = _check_paths(source, output)
    faces = None
    if check_faces:
        from mobiface_tf.export.faces import load_faces

        faces = load_faces(check_faces, num_check, seed=1)
    bn = None
    if bn_faces:
        from mobiface_tf.export.faces import load_faces

        bn = load_faces(bn_faces, num_bn_faces, seed=2)
    model, report = importer.import_model(source, backbone, embedding_dim, source_preprocess, faces, num_check,
                                          importer.MIN_COSINE if min_cosine is None else min_cosine, bn)
    report["output"] = str(out)
    # The checked model goes to a temporary .keras beside OUTPUT (missing folders created) and is renamed over it
    # only once it reads back as a Keras archive (mobiface_tf.atomic); then its report, the same way.
    with atomic_path(out, check=is_keras_file, keep_suffix=True) as tmp:  # Keras wants the ".keras" suffix
        model.save(tmp)
    write_json_atomic(f"{out}.import.json", report, indent=2)
    return report


def main(argv):
    """CLI: import --source into --output; 0 on success, 2 after one "error: ..." line (refused or bad input)."""
    del argv
    try:
        r = run(FLAGS.source, FLAGS.output, FLAGS.backbone, FLAGS.embedding_dim, FLAGS.source_preprocess,
                FLAGS.check_faces, FLAGS.num_check, FLAGS.min_cosine, FLAGS.bn_faces, FLAGS.num_bn_faces)
    except (ValueError, FileNotFoundError) as e:  # ImportRefused is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"imported {r['source']} ({r['format']}, {r['layers']} layers, {r['residual_adds']} residual adds, "
          f"{r['padding']} padding, source input {r['source_preprocess']}) -> {r['output']} "
          f"(embedding {r['embedding_dim']}, input raw RGB 0-255)")
    print(f"parity with the source on {r['num_images']} {r['check']}: cosine min {r['cosine_min']:.6f} "
          f"mean {r['cosine_mean']:.6f}; report: {r['output']}.import.json")
    return 0
