"""One embed() API over .keras, SavedModel and .tflite, checked against the model's own outputs."""
import numpy as np
import pytest

from mobiface_tf.embedder import PREPROCESS, l2_normalize, load_embedder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny raw-RGB-0..255 model saved three ways, plus a few random images and its direct outputs."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    inputs = keras.Input((112, 112, 3))
    x = keras.layers.Rescaling(1 / 128.0, offset=-127.5 / 128.0)(inputs)  # our models' first layer
    x = keras.layers.Conv2D(8, 3, strides=4, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(16)(x))
    root = tmp_path_factory.mktemp("tiny")
    model.save(root / "tiny.keras")
    model.export(str(root / "saved"), verbose=False)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    (root / "tiny.tflite").write_bytes(converter.convert())
    images = np.random.default_rng(0).integers(0, 256, (7, 112, 112, 3), dtype=np.uint8)
    direct = lambda x: np.asarray(model(np.asarray(x, np.float32), training=False))  # noqa: E731
    return root, images, direct


@pytest.mark.parametrize("rel", ["tiny.keras", "saved", "tiny.tflite"])
def test_formats_match_direct_outputs(tiny, rel):
    root, images, direct = tiny
    emb = load_embedder(root / rel, batch_size=3)  # 7 images: two full batches and a partial one
    assert emb.embedding_dim == 16
    got = emb.embed(images)
    assert got.shape == (7, 16) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, l2_normalize(direct(images)), atol=1e-4)
    flipped = emb.embed(images, flip=True)
    np.testing.assert_allclose(flipped, l2_normalize(direct(images) + direct(images[:, :, ::-1])), atol=1e-4)
    assert not np.allclose(flipped, got, atol=1e-3)  # the mirror really changes something
    np.testing.assert_allclose(emb.embed(images[0]), got[:1], atol=1e-6)  # a single HxWx3 image


def test_preprocess_modes(tiny):
    """Each mode on one pixel of known value, written out by hand (not the formulas again), then the embedder
    with that mode equals the model on the hand-checked conversion of the images."""
    root, images, direct = tiny
    pixel = np.array([[[0.0, 127.5, 255.0]]], np.float32)  # R, G, B
    by_hand = {"raw": [0.0, 127.5, 255.0], "bgr": [255.0, 127.5, 0.0], "minus1to1": [-1.0, 0.0, 1.0],
               "bgr_minus1to1": [1.0, 0.0, -1.0], "zero_one": [0.0, 0.5, 1.0],
               "arcface": [-0.99609375, 0.0, 0.99609375]}  # (x - 127.5) / 128 at 0 and 255: -+127.5 / 128
    assert set(by_hand) == set(PREPROCESS)
    for name, want in by_hand.items():
        np.testing.assert_allclose(PREPROCESS[name](pixel)[0, 0], want, rtol=0, atol=1e-7, err_msg=name)
    x = images.astype(np.float32)
    bgr = np.stack([x[..., 2], x[..., 1], x[..., 0]], -1)
    for name, expect in [("bgr", bgr), ("minus1to1", x / 127.5 - 1), ("bgr_minus1to1", bgr / 127.5 - 1),
                         ("zero_one", x / 255.0), ("arcface", x / 128.0 - 127.5 / 128.0)]:
        got = load_embedder(root / "tiny.keras", preprocess=name).embed(images)
        np.testing.assert_allclose(got, l2_normalize(direct(expect)), atol=1e-4, err_msg=name)


def test_clear_errors(tiny, tmp_path):
    root, images, _ = tiny
    with pytest.raises(FileNotFoundError, match="model not found: '.*nope.tflite'"):
        load_embedder(tmp_path / "nope.tflite")
    (tmp_path / "m.onnx").write_bytes(b"\0")
    with pytest.raises(ValueError, match="'.*m.onnx' is not a readable ONNX model"):
        load_embedder(tmp_path / "m.onnx")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="without saved_model.pb"):
        load_embedder(tmp_path / "empty_dir")
    with pytest.raises(ValueError, match="unknown preprocess 'rgb255'"):
        load_embedder(root / "tiny.tflite", preprocess="rgb255")
    emb = load_embedder(root / "tiny.tflite")
    with pytest.raises(ValueError, match=r"images are \(64, 64, 3\) but model .* expects \(112, 112, 3\)"):
        emb.embed(np.zeros((2, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\] RGB, got shape \(2, 112, 112, 1\)"):
        emb.embed(np.zeros((2, 112, 112, 1), np.uint8))


def test_reference_models_fp32_and_uint8(reference_tflite, reference_tflite_uint8, lfw_dir):
    """Real faces: the publisher's uint8 model (quantised input and output) agrees with fp32 on direction.

    Its quantisation is lossy: cosine(fp32, uint8) is ~0.86 per image (and the zero point 122 the model
    declares is the one that maximises it), far above the ~0 of unrelated vectors.
    """
    from mobiface_tf.align import load_image_rgb as read_image_rgb

    person = lfw_dir / "Aaron_Peirsol"
    images = np.stack([read_image_rgb(p) for p in sorted(person.glob("*.jpg"))[:3]] +
                      [read_image_rgb(lfw_dir / "Abel_Pacheco" / "Abel_Pacheco_0001.jpg")])
    fp32 = load_embedder(reference_tflite, num_threads=1)
    uint8 = load_embedder(reference_tflite_uint8, num_threads=1)
    assert fp32.embedding_dim == uint8.embedding_dim == 128
    a, b = fp32.embed(images), uint8.embed(images)
    agreement = np.sum(a * b, axis=1)
    assert np.all(agreement > 0.8), agreement
    for s in (a @ a.T, b @ b.T):  # both models: same person scores well above a different one
        assert min(s[0, 1], s[0, 2]) > s[0, 3] + 0.2, s


@pytest.mark.slow
def test_project_model_keras_roundtrip(tmp_path):
    """A project backbone saved as .keras loads through the embedder and reproduces its own outputs."""
    from mobiface_tf import models
    model = models.build("mobilefacenet")
    model.save(tmp_path / "mfn.keras")
    images = np.random.default_rng(1).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    emb = load_embedder(tmp_path / "mfn.keras")
    direct = np.asarray(model(images.astype(np.float32), training=False))
    assert emb.embedding_dim == direct.shape[1]
    np.testing.assert_allclose(emb.embed(images), l2_normalize(direct), atol=1e-4)


# ----------------------------------------------------------------------------------------------- output shapes
@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    """One tiny network under four heads sharing its weights, each saved as .keras and converted to .tflite by the
    real TFLite converter: flat [N, 16], NHWC 1x1 [N, 1, 1, 16] (a Reshape), NCHW 1x1 [N, 16, 1, 1] (that Reshape,
    then a transpose, as converted PyTorch/ONNX heads are), and [N, 2, 8], which is not an embedding."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    inputs = keras.Input((112, 112, 3))
    x = keras.layers.Rescaling(1 / 128.0, offset=-127.5 / 128.0)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=4, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    flat = keras.layers.Dense(16)(x)
    nhwc = keras.layers.Reshape((1, 1, 16))(flat)
    outputs = {"flat": flat, "nhwc": nhwc, "nchw": keras.layers.Permute((3, 1, 2))(nhwc),
               "pairs": keras.layers.Reshape((2, 8))(flat)}
    root = tmp_path_factory.mktemp("heads")
    for name, out in outputs.items():
        model = keras.Model(inputs, out)
        model.save(root / f"{name}.keras")
        (root / f"{name}.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return root


@pytest.mark.parametrize("fmt", ["tflite", "keras"])
@pytest.mark.parametrize("head", ["nhwc", "nchw"])
def test_1x1_spatial_output_embeds_as_its_flat_twin(heads, head, fmt):
    """Case tflite-4d-output-numpy-error: [N, 1, 1, D] and [N, D, 1, 1] are flattened to [N, D] (it used to end in
    numpy's "could not broadcast ... (3,1,1,16) into shape (3,16)", or take D = 1 from the last axis)."""
    images = np.random.default_rng(1).integers(0, 256, (7, 112, 112, 3), dtype=np.uint8)
    flat = load_embedder(heads / f"flat.{fmt}", batch_size=3)
    emb = load_embedder(heads / f"{head}.{fmt}", batch_size=3)  # 7 images: batches of 3, 3 and 1
    assert emb.embedding_dim == flat.embedding_dim == 16
    raw = emb.embed_raw(images)
    assert raw.shape == (7, 16)
    np.testing.assert_allclose(raw, flat.embed_raw(images), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(emb.embed(images, flip=True), flat.embed(images, flip=True), atol=1e-5)


@pytest.mark.parametrize("fmt", ["tflite", "keras"])
def test_output_of_another_shape_is_refused_at_load(heads, fmt):
    """An output that is not [N, D], [N, 1, 1, D] or [N, D, 1, 1] is refused when loaded, in one line naming the
    model and its shape (it used to load, with D taken from the last axis)."""
    import re

    path = heads / f"pairs.{fmt}"
    shape = r"\[(1|N), 2, 8\]" if fmt == "tflite" else r"\[N, 2, 8\]"  # a .tflite's batch is concrete (1)
    with pytest.raises(ValueError, match=rf"^model {re.escape(repr(str(path)))} outputs {shape}; an embedding must "
                                         r"be \[N, D\].*Flatten or a Reshape") as err:
        load_embedder(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("out_shape", [(1, 1, 16), (16, 1, 1), (2, 8)])
def test_onnx_output_shapes(tmp_path, out_shape):
    """The .onnx path follows the same rule: 1x1 spatial outputs embed as the flat model does, others are refused."""
    from conftest import make_onnx_embedder

    flat_path, _ = make_onnx_embedder(tmp_path / "flat.onnx", dim=16, preprocess="raw")
    path, _ = make_onnx_embedder(tmp_path / "shaped.onnx", dim=16, preprocess="raw", out_shape=out_shape)
    if out_shape == (2, 8):
        with pytest.raises(ValueError, match=r"^model '.*shaped.onnx' outputs \[N, 2, 8\]; an embedding must be"):
            load_embedder(path)
        return
    images = np.random.default_rng(2).integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)
    emb = load_embedder(path, batch_size=2)
    assert emb.embedding_dim == 16
    np.testing.assert_allclose(emb.embed(images), load_embedder(flat_path, batch_size=2).embed(images), atol=1e-5)
