"""Function-matching distillation's online teacher: it embeds exactly the student's augmented, mixed pixels."""
import numpy as np
import pytest
import tensorflow as tf

from conftest import make_onnx_embedder, onnx_reference, save_tiny_model
from mobiface_tf.data.augment import AugmentConfig
from mobiface_tf.data.pipeline import make_dataset
from mobiface_tf.data.synthetic import write_synthetic_tfrecords
from mobiface_tf.embedder import PREPROCESS, l2_normalize, load_embedder
from mobiface_tf.teacher import OnlineTeacher

AUG = AugmentConfig(scale=0.1, shift=0.05, downup=0.5, blur=0.5, grey=0.3, cutout=0.5, mixup=0.5, cutmix=0.3)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("teacher_shards")
    write_synthetic_tfrecords(d, 4, 8, seed=3, shards=2)
    return d


def _batch(shards, teacher, cfg=AUG, batch=8, seed=5):
    ds = make_dataset(shards, batch, training=True, seed=seed, deterministic=True, augment=cfg, teacher=teacher,
                      log_mix=True)
    images, labels, target, lam, partner, unmixed = (x.numpy() for x in next(iter(ds)))
    return images, target, lam, partner, unmixed


def test_pipeline_teacher_embeds_the_logged_augmented_batch_onnx(shards, tmp_path):
    path, w = make_onnx_embedder(tmp_path / "t.onnx", dim=16)
    teacher = OnlineTeacher(path)
    images, target, lam, _, unmixed = _batch(shards, teacher)
    assert target.shape == (8, 16) and target.dtype == np.float32
    # Re-embed the logged batch independently (numpy reference of the ONNX graph): the same embeddings.
    prep = PREPROCESS[teacher.preprocess]
    np.testing.assert_allclose(target, l2_normalize(onnx_reference(images, w, prep)), atol=1e-4)
    # ... and they are not the embeddings of the views before mixing (so the check can tell the difference).
    assert lam.min() < 0.95
    assert np.abs(target - l2_normalize(onnx_reference(unmixed, w, prep))).max() > 1e-2


def test_reference_tflite_teacher_sees_the_student_pixels_and_mixup_target(shards, reference_tflite):
    cfg = AugmentConfig(scale=0.1, shift=0.05, blur=0.5, grey=0.3, cutout=0.5, mixup=1.0)
    images, target, lam, partner, unmixed = _batch(shards, OnlineTeacher(reference_tflite), cfg)
    independent = load_embedder(reference_tflite, batch_size=4, num_threads=1)  # a separate interpreter
    np.testing.assert_allclose(target, independent.embed(images, flip=False), atol=1e-4)
    # Mixup: the target is the teacher's embedding of the mixed image, not the mix of the two embeddings.
    np.testing.assert_allclose(images, lam[:, None, None, None] * unmixed +
                               (1 - lam[:, None, None, None]) * unmixed[partner], atol=1e-3)
    e = independent.embed(unmixed, flip=False)
    mixed_embeddings = l2_normalize(lam[:, None] * e + (1 - lam[:, None]) * e[partner])
    strong = lam < 0.9
    assert strong.sum() >= 2
    gap = np.abs(target[strong] - mixed_embeddings[strong]).max(axis=1)
    assert gap.min() > 1e-2, gap


def test_graph_teacher_runs_in_the_step_and_equals_its_embedder(tmp_path):
    path = save_tiny_model(tmp_path / "teacher.keras", dim=12, seed=1)
    teacher = OnlineTeacher(path)
    assert not teacher.in_pipeline and teacher.describe()["runs_in"] == "training step"
    images = np.random.default_rng(0).uniform(0, 255, (5, 112, 112, 3)).astype(np.float32)
    in_graph = tf.function(teacher.embed_in_graph)(tf.constant(images)).numpy()
    np.testing.assert_allclose(in_graph, load_embedder(path).embed(images, flip=False), atol=1e-5)
    with pytest.raises(ValueError, match="inside the training step"):
        make_dataset(tmp_path, 4, training=True, augment=AUG, teacher=teacher)


def test_graph_teacher_with_a_1x1_spatial_output_gives_flat_targets(tmp_path):
    """A .keras teacher whose output is [N, 1, 1, D] (loaded through load_embedder, which flattens it) gives [B, D]
    targets in the step, equal to its flat twin's; it used to normalise over the size-1 axis and keep 4 axes."""
    import keras

    path = save_tiny_model(tmp_path / "flat.keras", dim=12, seed=1)
    flat = keras.models.load_model(path, compile=False)
    keras.Model(flat.input, keras.layers.Reshape((1, 1, 12))(flat.output)).save(tmp_path / "spatial.keras")
    teacher = OnlineTeacher(tmp_path / "spatial.keras")
    assert teacher.embedding_dim == 12
    images = np.random.default_rng(0).uniform(0, 255, (5, 112, 112, 3)).astype(np.float32)
    in_graph = tf.function(teacher.embed_in_graph)(tf.constant(images)).numpy()
    assert in_graph.shape == (5, 12)
    np.testing.assert_allclose(in_graph, load_embedder(path).embed(images, flip=False), atol=1e-5)


def test_online_teacher_pipeline_resumes_from_an_iterator_checkpoint(shards, tmp_path):
    path, _ = make_onnx_embedder(tmp_path / "t.onnx", dim=8)
    teacher = OnlineTeacher(path)

    def iterator():
        return iter(make_dataset(shards, 4, training=True, seed=9, deterministic=True, augment=AUG, teacher=teacher))

    it = iterator()
    next(it)
    saved = tf.train.Checkpoint(iterator=it).save(str(tmp_path / "ckpt" / "it"))
    want = [x.numpy() for x in next(it)]
    it2 = iterator()
    tf.train.Checkpoint(iterator=it2).restore(saved).assert_consumed()
    got = [x.numpy() for x in next(it2)]
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)


def test_precomputed_targets_and_augmentations_are_refused_together(shards):
    with pytest.raises(ValueError, match="online teacher"):
        make_dataset(shards, 4, training=True, augment=AUG, teacher_dim=16)
