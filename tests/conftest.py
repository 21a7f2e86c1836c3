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
