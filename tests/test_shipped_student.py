"""The student this project ships in models/ (issue 28): its files load, embed and agree with each other; it
scores on LFW fold 1 what its card says (people it never saw); the CLIs use it when no --model is given; and a
run can continue from it with --init_from."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO  # noqa: E402  (the repo root, one definition for every test file)
from mobiface_tf import shipped

MB = 1024 * 1024


def _faces(lfw_dir, n=48):
    """n real aligned LFW-112 crops (uint8 [n, 112, 112, 3]), one per person, alphabetical."""
    from PIL import Image

    people = sorted(p for p in lfw_dir.iterdir() if p.is_dir())[:n]
    return np.stack([np.asarray(Image.open(sorted(p.iterdir())[0]).convert("RGB")) for p in people])


def test_shipped_files_are_there_within_their_size_budget():
    """The three files and the card are committed (not ignored), within the issue's sizes."""
    for path in (shipped.STUDENT_KERAS, shipped.STUDENT_TFLITE, shipped.STUDENT_INT8, shipped.STUDENT_CARD):
        assert path.is_file(), f"{path} is missing"
        ignored = subprocess.run(["git", "check-ignore", "-q", str(path.relative_to(REPO))], cwd=REPO)
        assert ignored.returncode == 1, f"{path} is ignored by .gitignore"
    assert shipped.STUDENT_KERAS.stat().st_size <= 12 * MB
    assert shipped.STUDENT_INT8.stat().st_size <= 3 * MB
    card = shipped.card()
    assert card["total_images_seen"] == sum(r["images_seen"] for r in card["runs"]) > 0
    assert card["scores"]["lfw_folds_1_3_fp32"]["accuracy"] > 0.5


def test_shipped_files_embed_alike(lfw_dir):
    """.keras against fp32 .tflite: cosine >= 0.999 on every one of 48 real faces; int8 against fp32 >= 0.95 on
    average (quantization error), and the embeddings tell people apart (not one constant vector)."""
    from mobiface_tf.embedder import load_embedder

    faces = _faces(lfw_dir)
    keras_e = load_embedder(shipped.STUDENT_KERAS).embed(faces)
    fp32 = load_embedder(shipped.STUDENT_TFLITE).embed(faces)
    int8 = load_embedder(shipped.STUDENT_INT8).embed(faces)
    assert keras_e.shape == fp32.shape == int8.shape == (len(faces), 128)
    unit = lambda e: e / np.linalg.norm(e, axis=1, keepdims=True)  # noqa: E731
    k, f, q = unit(keras_e), unit(fp32), unit(int8)
    assert np.min(np.sum(k * f, axis=1)) >= 0.999
    assert np.mean(np.sum(q * f, axis=1)) >= 0.95
    cross = f @ f.T
    assert np.mean(cross[~np.eye(len(f), dtype=bool)]) < 0.5  # different people are not alike


@pytest.mark.slow
def test_shipped_student_scores_its_card_on_lfw_fold_1(lfw_dir, lfw_pairs):
    """The fp32 student on the 600 pairs of LFW View 2 fold 1 (flip test, people it never trained on), at the
    deployment threshold of its card: accuracy at least the card's folds 1-3 accuracy minus 0.03."""
    from PIL import Image

    from mobiface_tf.data.verification import read_lfw_pairs
    from mobiface_tf.embedder import load_embedder

    scores = shipped.card()["scores"]["lfw_folds_1_3_fp32"]
    pairs = [p for p in read_lfw_pairs(lfw_pairs, lfw_dir) if p.fold == 0]
    assert len(pairs) == 600
    paths = sorted({q for p in pairs for q in (p.path_a, p.path_b)})
    images = np.stack([np.asarray(Image.open(q).convert("RGB")) for q in paths])
    emb = load_embedder(shipped.STUDENT_TFLITE).embed(images, flip=True)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    row = {q: i for i, q in enumerate(paths)}
    sim = np.array([emb[row[p.path_a]] @ emb[row[p.path_b]] for p in pairs])
    same = np.array([p.issame for p in pairs])
    accuracy = float(np.mean((sim > scores["threshold"]) == same))
    assert accuracy >= scores["accuracy"] - 0.03, (accuracy, scores)


@pytest.mark.slow
def test_verify_without_model_uses_the_shipped_student(lfw_dir, tmp_path):
    """`verify A B` with no --model answers with the shipped student: same person for two photos of one man,
    different for two people; the JSON names the model."""
    a, b = sorted((lfw_dir / "Colin_Powell").iterdir())[:2]
    c = sorted((lfw_dir / "Tony_Blair").iterdir())[0]
    out = []
    for x, y in ((a, b), (a, c)):
        proc = subprocess.run([sys.executable, "-m", "mobiface_tf.verify", "--aligned", "--json", str(x), str(y)],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        out.append(json.loads(proc.stdout))
    assert out[0]["model"] == "models/mobiface_student_fp32.tflite"
    assert out[0]["same"] is True and out[1]["same"] is False, out


@pytest.mark.slow
def test_init_from_the_shipped_student_continues_training(tmp_path):
    """A run started with --init_from=models/mobiface_student.keras starts from its weights and trains: after 2
    small steps every kernel has moved, but 100x less than the distance from the student to a fresh network."""
    import keras

    from conftest import train_config
    from mobiface_tf.data.synthetic import write_synthetic_tfrecords
    from mobiface_tf.training.loop import train_model
    from mobiface_tf.training.model import build_backbone

    data = tmp_path / "data"
    write_synthetic_tfrecords(data, num_identities=4, images_per_identity=4, seed=0, shards=1)
    src = keras.models.load_model(shipped.STUDENT_KERAS, compile=False)
    cfg = train_config(data, tmp_path / "run", backbone="mobiface", head="gdc", embedding_dim=128,
                       init_from=str(shipped.STUDENT_KERAS), steps=2, batch_size=8, lr=1e-4, log_every=1,
                       ckpt_every=2, shuffle_buffer=16)
    result = train_model(cfg)
    keras.utils.set_random_seed(1)
    fresh = build_backbone("mobiface", 128, "gdc")

    def distance(a, b):
        return sum(float(np.sum((np.array(x) - np.array(y)) ** 2)) for x, y in zip(a.trainable_weights,
                                                                               b.trainable_weights)) ** 0.5

    moved, far = distance(result.parts.backbone, src), distance(fresh, src)
    assert moved > 0, "2 steps changed nothing: the run did not train"
    assert moved < far / 100, (moved, far)  # continued from the student, not from a fresh network
