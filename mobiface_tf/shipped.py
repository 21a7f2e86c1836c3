"""The student this project trains and ships in `models/` (issue 28), and the default model of the CLIs.

    models/mobiface_student.keras         the embedding network (MobiFace-gdc, 112x112x3 -> 128-d), Keras 3
    models/mobiface_student_fp32.tflite   its fp32 TFLite export (the CLIs' default --model)
    models/mobiface_student_int8.tflite   its int8 export (MSE activation ranges)
    models/mobiface_student.json          what it was trained on, by which runs, and every score with its command
    models/MODEL_CARD.md                  the same for a reader

`verify`, `identify` (and `demo` when the shared reference model is absent) use STUDENT_TFLITE when no --model
is given. The files live beside the package in the repository (an editable install or a checkout), not inside
the wheel: an installed package without them says so in one line.
"""
from __future__ import annotations

import json
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
STUDENT_KERAS = MODELS_DIR / "mobiface_student.keras"
STUDENT_TFLITE = MODELS_DIR / "mobiface_student_fp32.tflite"
STUDENT_INT8 = MODELS_DIR / "mobiface_student_int8.tflite"
STUDENT_CARD = MODELS_DIR / "mobiface_student.json"

__all__ = ["MODELS_DIR", "STUDENT_KERAS", "STUDENT_TFLITE", "STUDENT_INT8", "STUDENT_CARD", "default_model",
           "card"]


def default_model(model=None) -> Path | str:
    """`model` when given, else the shipped fp32 student; ValueError (one line) when neither is there."""
    if model:
        return model
    if STUDENT_TFLITE.is_file():
        try:  # printed in answers and JSON: relative to the working folder when it is inside it
            return STUDENT_TFLITE.relative_to(Path.cwd().resolve())
        except ValueError:
            return STUDENT_TFLITE
    raise ValueError(f"no --model given and the shipped student {STUDENT_TFLITE} is absent (an installed package "
                     "does not carry models/); pass --model=PATH to a .keras, .tflite, .onnx file or SavedModel dir")


def card() -> dict:
    """The shipped student's card (models/mobiface_student.json): data, teacher, runs, cumulative images seen
    and CPU hours, and every score with its command."""
    return json.loads(STUDENT_CARD.read_text())
