"""Is this the same person? Face verification on two photos.

    python -m mobiface_tf.verify [--model=PATH] IMG_A IMG_B [--threshold=T] [--json] [--aligned]

Without --model, the student this project ships (models/mobiface_student_fp32.tflite, mobiface_tf/shipped.py).

Each photo (any size) goes through MTCNN; the largest, most central face is warped to the ArcFace 112x112
template (mobiface_tf.align), embedded, and the two unit embeddings are compared by cosine similarity.
"same" when similarity > threshold. The threshold is --threshold, else the model's evaluation sidecar
(MODEL.eval.json from tools/evaluate.py), else faces.DEFAULT_THRESHOLD (documented there).
"""
from __future__ import annotations


if __name__ == "__main__":  # `python -m mobiface_tf.verify`: the verify command via mobiface_tf.cli,
    # before TensorFlow is imported (quiet start-up)
    from mobiface_tf import cli

    cli.verify()

import dataclasses
import json
import sys

from absl import flags

from mobiface_tf.embedder import EmbeddingError
from mobiface_tf.faces import (FaceError, check_model_path, face_from_image, load_model, read_photo,
                               resolve_threshold)


@dataclasses.dataclass
class Verdict:
    """The answer to "same person?" for two photos.

    similarity: cosine of the two embeddings; same: similarity > threshold; threshold_source: where the
    threshold came from (flag, sidecar or default); faces_found: faces seen per photo; model: the model path.
    """

    image_a: str
    image_b: str
    similarity: float
    threshold: float
    threshold_source: str
    same: bool
    faces_found: tuple[int, int]  # faces MTCNN saw in each photo (1 each with --aligned)
    model: str

    def to_json(self) -> dict:
        """The fields as a JSON-ready dict, plus "verdict": "same" or "different" (faces_found as a list).

        similarity and threshold are rounded to 4 decimals, as the text shows them: float32 results differ in
        the last bits between CPUs, so full precision would print another number on another machine.
        """
        d = dataclasses.asdict(self)
        d["similarity"], d["threshold"] = round(self.similarity, 4), round(self.threshold, 4)
        d["verdict"] = "same" if self.same else "different"
        d["faces_found"] = list(self.faces_found)
        return d

    def to_text(self) -> str:
        """The CLI's text output: a note per photo with several faces, the similarity and threshold, the verdict."""
        notes = "".join(f"note: {n} faces in {img}; compared the largest, most central one\n"
                        for n, img in zip(self.faces_found, (self.image_a, self.image_b)) if n > 1)
        return (f"{notes}similarity {self.similarity:.4f}  threshold {self.threshold:.4f} ({self.threshold_source})\n"
                f"verdict: {'same' if self.same else 'different'} person\n")


def similarity(embedder, crop_a, crop_b) -> float:
    """Cosine similarity of two aligned crops (the embedder returns unit vectors, so a dot product)."""
    import numpy as np

    emb = embedder.embed(np.stack([crop_a, crop_b]))
    return float(emb[0] @ emb[1])


def verify(model_path, image_a, image_b, threshold: float | None = None, aligned: bool = False,
           embedder=None, aligner=None, warn=None) -> Verdict:
    """Library entry: FaceError on any bad input. Pass `embedder` / `aligner` to reuse them across calls.

    warn(line) hears about a threshold sidecar that is not used (see faces.resolve_threshold).
    """
    # Cheap checks first, so a typo in a path fails before TF and MTCNN load.
    model_path = check_model_path(model_path)  # no --model: the shipped student
    t, source = resolve_threshold(model_path, threshold, warn)
    photos = [read_photo(image_a), read_photo(image_b)]
    if embedder is None:
        embedder = load_model(model_path)
    if aligner is None and not aligned:
        from mobiface_tf.align import FaceAligner

        aligner = FaceAligner()
    (crop_a, n_a), (crop_b, n_b) = (face_from_image(p, str(name), None if aligned else aligner)
                                    for p, name in zip(photos, (image_a, image_b)))
    s = similarity(embedder, crop_a, crop_b)
    return Verdict(str(image_a), str(image_b), s, t, source, s > t, (n_a, n_b), str(model_path))


def run(model_path, images, threshold=None, aligned=False, as_json=False, out=sys.stdout, err=sys.stderr) -> int:
    """The CLI without flag parsing: prints the verdict, or one error line; returns the exit status."""
    try:
        if len(images) != 2:
            raise FaceError(f"expected two images IMG_A IMG_B, got {len(images)}: {list(images)}")
        v = verify(model_path, images[0], images[1], threshold, aligned,
                   warn=lambda m: print(f"warning: {m}", file=err))
    except (FaceError, EmbeddingError) as e:  # EmbeddingError: a broken (NaN) model never answers
        print(f"error: {e}", file=err)
        return 1
    out.write(json.dumps(v.to_json()) + "\n" if as_json else v.to_text())
    return 0


FLAGS = flags.FLAGS


def define_flags():
    """Flags are defined only when run as a program, so importing this module (tests, verify and identify
    together) never registers duplicate absl flags."""
    flags.DEFINE_string("model", None, "Embedding model: .keras file, SavedModel dir, .tflite or .onnx file; "
                       "default: the shipped student models/mobiface_student_fp32.tflite.")
    flags.DEFINE_float("threshold", None, "Cosine threshold; default: the model's .eval.json sidecar, else the "
                       "documented default in mobiface_tf/faces.py.")
    flags.DEFINE_bool("json", False, "Print one JSON object instead of text.")
    flags.DEFINE_bool("aligned", False, "The images are already aligned face crops: skip detection, only resize.")


def main(argv):
    """CLI: say whether the two photos IMG_A IMG_B show the same person; returns the exit status (0 ok, 1 error).

    Flags are defined by the module-level `define_flags()`.
    """
    return run(FLAGS.model, argv[1:], FLAGS.threshold, FLAGS.aligned, FLAGS.json)
