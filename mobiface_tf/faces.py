"""Photo -> aligned 112x112 face -> embedding: the shared path of the verify and identify CLIs.

    model = load_model("model.tflite")                  # .keras, SavedModel dir or .tflite
    crop = load_face("photo.jpg", FaceAligner())          # largest face, warped to the ArcFace template
    emb = model.embed(crop[None])                         # [1, D], unit L2 norm
    threshold, source = resolve_threshold("model.tflite") # sidecar from tools/evaluate.py, else the default

Every failure a user can cause (missing model, unreadable photo, no face, bad crop size) raises `FaceError`
whose message is one line naming the bad value and what to do; the CLIs print it and exit non-zero.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from mobiface_tf.align import FaceAligner
from mobiface_tf.images import CROP_SIZE, DEFAULT_MAX_PIXELS, ImageError, load_image_rgb, printable

# Cosine-similarity threshold used when the model has no evaluation sidecar (model + ".eval.json", written by
# tools/evaluate.py). Two faces are "the same person" when cosine(emb_a, emb_b) > threshold.
# Source, measured once (not at run time): the reference InsightFace MobileFaceNet
# (../shared/data/models/mobilefacenet_insightface_fp32.tflite) on LFW View 2 (../shared/data/lfw), every photo
# re-aligned by MTCNN with FaceAligner's defaults, no flip. The threshold maximising accuracy on folds 2-10
# (5,373 pairs; the 27 pairs touching one of the 17 photos where MTCNN finds no face left out, as the CLI would
# refuse them) is 0.2753, with 99.33% correct there; fold 1 was held out, and tests/test_verify.py scores it at
# this default. (10-fold protocol on all 6,000 pairs, the 17 photos kept unaligned: 99.17% +- 0.62%, per-fold
# thresholds 0.269-0.299.)
# It suits that model and models trained the same way (ArcFace loss, unit embeddings); for any other model run
# `tools/evaluate.py --model=PATH ...` to get its own sidecar, since each embedding space has its own threshold.
# For identification the same threshold applies to the best template score; with many identities an impostor's
# best score creeps up (it is a max over the gallery), so raise --threshold for large galleries.
DEFAULT_THRESHOLD = 0.275
DEFAULT_THRESHOLD_SOURCE = ("default 0.275: reference MobileFaceNet on LFW folds 2-10, MTCNN-aligned; "
                            "run tools/evaluate.py on your model for its own")

# A crop passed with --aligned may be any size (it is resized), but must be roughly square: the ArcFace
# template is square, and a 2:1 image is not an aligned face. AT&T's 92x112 (ratio 0.82) still passes.
_ALIGNED_MAX_ASPECT = 1.3


class FaceError(ValueError):
    """A problem with the user's input; str(err) is the one-line message the CLIs print."""


# ----------------------------------------------------------------------------------------------- model
def check_model_path(path) -> Path:
    """Cheap existence check, so a wrong --model is reported before anything slow happens. No --model: the
    shipped student (mobiface_tf/shipped.py); returns the path to use."""
    from mobiface_tf.shipped import default_model

    try:
        path = Path(default_model(path))
    except ValueError as e:
        raise FaceError(str(e)) from None
    if not path.exists():
        raise FaceError(f"model not found: {str(path)!r}. Pass --model=PATH to a .keras file, a SavedModel dir "
                        "or a .tflite file")
    return path


def load_model(path, preprocess: str | None = None, num_threads: int | None = None, flip: bool | None = None):
    """load_embedder with its failures turned into one-line FaceErrors.

    preprocess / flip default to how the model's eval sidecar measured its threshold (raw, no flip without
    a sidecar), so the CLI's scores are comparable with that threshold.
    """
    from mobiface_tf.embedder import load_embedder
    from mobiface_tf.sidecar import read_sidecar_settings

    path = check_model_path(path)
    try:
        settings = read_sidecar_settings(path)
    except ValueError as e:
        raise FaceError(f"bad threshold sidecar next to {str(path)!r} ({str(e).splitlines()[0]}); fix or delete "
                        "it") from None
    try:
        embedder = load_embedder(path, preprocess=preprocess or settings["preprocess"], num_threads=num_threads)
        embedder.flip = settings["flip"] if flip is None else bool(flip)
        return embedder
    except (ValueError, OSError, RuntimeError, TypeError) as e:
        # Keras, TF and LiteRT raise these on a file that is not a model; their text can span many lines.
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FaceError(f"cannot load model {str(path)!r}: {first[:300]}") from None


def resolve_threshold(model_path, override: float | None = None, warn=None) -> tuple[float, str]:
    """(threshold, where it came from): --threshold, else the model's eval sidecar, else DEFAULT_THRESHOLD.

    A sidecar measured on another model (its fingerprint differs), on too few pairs, or without pairs of both
    kinds is not used: `warn(line)` gets one line naming it and why (default: a logged warning; the CLIs print
    "warning: ..."), and the default applies. FaceError for an out-of-range --threshold or a sidecar that
    cannot be parsed.
    """
    from mobiface_tf.sidecar import read_threshold, sidecar_path

    if override is not None:
        if not -1.0 <= override <= 1.0:
            raise FaceError(f"--threshold={override} is outside [-1, 1], the range of a cosine similarity")
        return float(override), "--threshold"
    try:
        t = read_threshold(model_path, warn)
    except ValueError as e:  # includes json.JSONDecodeError
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FaceError(f"bad threshold sidecar {str(sidecar_path(model_path))!r} ({first}); fix or delete it, "
                        "or pass --threshold=T") from None
    if t is not None:
        return t, f"sidecar {sidecar_path(model_path)}"
    return DEFAULT_THRESHOLD, DEFAULT_THRESHOLD_SOURCE


# ----------------------------------------------------------------------------------------------- faces
def read_photo(path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """uint8 RGB [H, W, 3]; FaceError on a missing, unreadable, non-image or oversized file."""
    path = Path(path)
    if not path.is_file():
        raise FaceError(f"image not found: {str(path)!r}" if not path.exists() else
                        f"not a file: {str(path)!r}; pass an image file")
    try:
        return load_image_rgb(path, max_pixels=max_pixels)
    except ImageError as e:
        raise FaceError(str(e)) from None


def prepare_aligned(image: np.ndarray, name: str, size: int = CROP_SIZE) -> np.ndarray:
    """An already-aligned crop (--aligned): validated as roughly square, resized to size x size."""
    h, w = image.shape[:2]
    if max(h, w) / min(h, w) > _ALIGNED_MAX_ASPECT:
        raise FaceError(f"{name} is {w}x{h}, not an aligned square face crop (e.g. 112x112); "
                        "drop --aligned to detect and align the face")
    if (h, w) != (size, size):
        # INTER_AREA when shrinking avoids aliasing; bilinear when enlarging.
        interp = cv2.INTER_AREA if min(h, w) > size else cv2.INTER_LINEAR
        image = cv2.resize(image, (size, size), interpolation=interp)
    return image


def face_from_image(image: np.ndarray, name: str, aligner: FaceAligner | None) -> tuple[np.ndarray, int]:
    """(112x112x3 uint8 crop, number of faces found); aligner=None means the image is already aligned."""
    if aligner is None:
        return prepare_aligned(image, name), 1
    result = aligner.align(image)
    if result.crop is None:
        h, w = image.shape[:2]
        raise FaceError(f"{result.reason} in {name} ({w}x{h}); use a photo with a visible face, or --aligned "
                        "if it is already an aligned crop")
    return result.crop, result.num_faces


def load_face(path, aligner: FaceAligner | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, int]:
    """Photo file -> (aligned crop, faces found). The largest, most central face wins (align.pick_face)."""
    return face_from_image(read_photo(path, max_pixels), printable(path), aligner)
