"""Shared fixtures. Real-face tests read ../shared/data and skip with a reason when it is absent."""
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real face data not found at {path} (../shared/data is only present on project machines)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _need(SHARED_DATA)


@pytest.fixture(scope="session")
def lfw_dir(shared_data) -> Path:
    return _need(shared_data / "lfw" / "lfw-112x112")


@pytest.fixture(scope="session")
def lfw_pairs(shared_data) -> Path:
    return _need(shared_data / "lfw" / "pairs.txt")


@pytest.fixture(scope="session")
def att_dir(shared_data) -> Path:
    return _need(shared_data / "att_faces")


@pytest.fixture(scope="session")
def reference_tflite(shared_data) -> Path:
    return _need(shared_data / "models" / "mobilefacenet_insightface_fp32.tflite")


@pytest.fixture(scope="session")
def reference_tflite_uint8(shared_data) -> Path:
    return _need(shared_data / "models" / "mobilefacenet_insightface_uint8.tflite")


@pytest.fixture(scope="session")
def recordio_dir(shared_data) -> Path:
    return _need(shared_data / "recordio")


@pytest.fixture(scope="session")
def bin_file(shared_data) -> Path:
    return _need(shared_data / "bin" / "validation.bin")


def make_onnx_embedder(path, dim: int = 16, layout: str = "nchw", size: int = 112, seed: int = 0,
                       preprocess: str | None = None, batch=None):
    """A small ONNX face "embedder" built with the onnx helper API (nothing downloaded): 16x16 average pooling
    -> flatten (C, H, W order) -> MatMul with a seeded random [3 * (size/16)^2, dim] matrix. Returns (path, W)
    so tests can compute the expected output with numpy (`onnx_reference`)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    cells = size // 16
    w = np.random.default_rng(seed).normal(size=(3 * cells * cells, dim)).astype(np.float32)
    shape = [batch, 3, size, size] if layout == "nchw" else [batch, size, size, 3]
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [batch, dim])
    nodes = []
    src = "image"
    if layout == "nhwc":
        nodes.append(helper.make_node("Transpose", ["image"], ["chw"], perm=[0, 3, 1, 2]))
        src = "chw"
    nodes += [helper.make_node("AveragePool", [src], ["pooled"], kernel_shape=[16, 16], strides=[16, 16]),
              helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
              helper.make_node("MatMul", ["flat", "W"], ["embedding"])]
    graph = helper.make_graph(nodes, "tiny_face_embedder", [x], [y], initializer=[numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if preprocess:
        helper.set_model_props(model, {"preprocess": preprocess})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path), w


def onnx_reference(images, w, preprocess=lambda x: x):
    """What make_onnx_embedder's model computes for RGB images [N, H, W, 3] (before L2 normalisation)."""
    import numpy as np

    x = preprocess(np.asarray(images, np.float32))
    n, h, wd, _ = x.shape
    pooled = x.reshape(n, h // 16, 16, wd // 16, 16, 3).mean(axis=(2, 4))  # [N, h, w, C]
    flat = pooled.transpose(0, 3, 1, 2).reshape(n, -1)  # C, H, W order, as ONNX Flatten of NCHW
    return flat @ w
