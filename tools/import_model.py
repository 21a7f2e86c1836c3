"""Import a published MobileFaceNet (.tflite or NCHW .onnx) into the project's Keras network: a thin CLI over
mobiface_tf.import_model (same flags; see that module and docs/import.md).

    python tools/import_model.py --source=../shared/data/models/mobilefacenet_insightface_fp32.tflite \
        --backbone=mobilefacenet --embedding_dim=128 --output=runs/import/mobilefacenet_imported.keras \
        --check_faces=../shared/data/lfw/lfw-112x112 --num_check=500
"""
import sys

from mobiface_tf import quiet  # first: TensorFlow's start-up log is filtered out unless --verbose

quiet.install(sys.argv)

from absl import app  # noqa: E402

from mobiface_tf import import_model  # noqa: E402

if __name__ == "__main__":
    import_model.define_flags()
    quiet.define_verbose_flag()
    app.run(import_model.main)
