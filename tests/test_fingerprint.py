"""The one model fingerprint (mobiface_tf.fingerprint): every file a model reads, and every caller agrees on it."""
import hashlib
import json
import types

import pytest
from conftest import make_onnx_embedder

from mobiface_tf.fingerprint import model_files, model_fingerprint


def test_a_file_is_its_plain_sha256(tmp_path):
    """A .tflite / .keras fingerprint is `sha256sum` of the file, so existing indexes and caches stay valid."""
    model = tmp_path / "m.tflite"
    model.write_bytes(b"flatbuffer bytes")
    assert model_fingerprint(model) == hashlib.sha256(b"flatbuffer bytes").hexdigest()


def test_a_directory_covers_every_file_and_its_name(tmp_path):
    saved = tmp_path / "saved_model"
    (saved / "variables").mkdir(parents=True)
    (saved / "saved_model.pb").write_bytes(b"graph")
    (saved / "variables" / "variables.data-00000-of-00001").write_bytes(b"weights v0")
    first = model_fingerprint(saved)
    assert [p.name for p in model_files(saved)] == ["saved_model.pb", "variables.data-00000-of-00001"]
    (saved / "variables" / "variables.data-00000-of-00001").write_bytes(b"weights v1")
    second = model_fingerprint(saved)
    (saved / "variables" / "variables.data-00000-of-00001").rename(saved / "variables" / "other")
    assert len({first, second, model_fingerprint(saved)}) == 3


def test_onnx_external_data_is_part_of_the_model(tmp_path):
    """onnx-external-data-stale-gallery-index: retraining rewrites face.onnx.data and leaves face.onnx's bytes
    alone; the fingerprint changes with the weights, and a missing data file does not crash it."""
    pytest.importorskip("onnx")
    model = tmp_path / "face.onnx"
    make_onnx_embedder(model, seed=0, external_data=True)
    graph_bytes, v0 = model.read_bytes(), model_fingerprint(model)
    assert model_files(model) == [model, tmp_path / "face.onnx.data"]
    assert v0 != hashlib.sha256(graph_bytes).hexdigest()
    make_onnx_embedder(model, seed=1, external_data=True)
    assert model.read_bytes() == graph_bytes and model_fingerprint(model) != v0
    (tmp_path / "face.onnx.data").unlink()
    assert model_fingerprint(model) not in (v0, hashlib.sha256(graph_bytes).hexdigest())
    inline = tmp_path / "inline.onnx"
    make_onnx_embedder(inline, seed=0)  # weights inside the .onnx: the plain sha256 again
    assert model_fingerprint(inline) == hashlib.sha256(inline.read_bytes()).hexdigest()


def test_every_caller_keys_on_the_same_fingerprint(tmp_path):
    """identify's index, the threshold sidecar and bench_identify's embedding cache agree for a SavedModel-style
    directory (the manifest's teacher is checked in test_distill): one function, one value."""
    from mobiface_tf import sidecar
    from mobiface_tf.gallery import model_key
    from mobiface_tf.megaface import features

    saved = tmp_path / "saved_model"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"graph")
    (saved / "weights.bin").write_bytes(b"weights")
    expected = model_fingerprint(saved)
    emb = types.SimpleNamespace(path=saved, embedding_dim=8, preprocess="raw", flip=False)
    assert model_key(saved, emb, aligned=True)["sha256"] == expected
    assert features.embedder_cache_key(emb).startswith(expected[:16])
    written = sidecar.write_sidecar(saved, {"threshold": 0.3, "num_positive": 300, "num_negative": 300})
    assert json.loads(written.read_text())["model_sha256"] == expected
