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


# Every fixture that reads ../shared/data. A test using any of them (directly or through another fixture) gets the
# `shared_data` marker automatically, so `-m "not shared_data"` deselects exactly the tests that need the data;
# tests that read the path some other way carry an explicit @pytest.mark.shared_data.
SHARED_DATA_FIXTURES = {"shared_data", "lfw_dir", "lfw_pairs", "att_dir", "reference_tflite", "reference_tflite_uint8",
                        "recordio_dir", "bin_file", "cfp_dir"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SHARED_DATA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.shared_data)


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


@pytest.fixture(scope="session")
def cfp_dir(shared_data) -> Path:
    return _need(shared_data / "cfp" / "Protocol" / "Pair_list_F.txt").parents[1]


def make_onnx_embedder(path, dim: int = 16, layout: str = "nchw", size: int = 112, seed: int = 0,
                       preprocess: str | None = None, batch=None, external_data: bool = False, out_shape=None):
    """A small ONNX face "embedder" built with the onnx helper API (nothing downloaded): 16x16 average pooling
    -> flatten (C, H, W order) -> MatMul with a seeded random [3 * (size/16)^2, dim] matrix. Returns (path, W)
    so tests can compute the expected output with numpy (`onnx_reference`). external_data=True keeps W in
    `<path>.data` (ONNX external data), so two seeds give the same .onnx bytes and different weight files.
    out_shape: the output's non-batch axes, e.g. (1, 1, dim) or (dim, 1, 1): a final Reshape of the [N, dim]
    embedding (None: no Reshape, the output is [N, dim])."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    cells = size // 16
    w = np.random.default_rng(seed).normal(size=(3 * cells * cells, dim)).astype(np.float32)
    shape = [batch, 3, size, size] if layout == "nchw" else [batch, size, size, 3]
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [batch, *(out_shape or (dim,))])
    nodes = []
    src = "image"
    if layout == "nhwc":
        nodes.append(helper.make_node("Transpose", ["image"], ["chw"], perm=[0, 3, 1, 2]))
        src = "chw"
    nodes += [helper.make_node("AveragePool", [src], ["pooled"], kernel_shape=[16, 16], strides=[16, 16]),
              helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
              helper.make_node("MatMul", ["flat", "W"], ["embedding" if out_shape is None else "flat_embedding"])]
    initializer = [numpy_helper.from_array(w, "W")]
    if out_shape is not None:
        initializer.append(numpy_helper.from_array(np.array([-1, *out_shape], np.int64), "out_shape"))
        nodes.append(helper.make_node("Reshape", ["flat_embedding", "out_shape"], ["embedding"]))
    graph = helper.make_graph(nodes, "tiny_face_embedder", [x], [y], initializer=initializer)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if preprocess:
        helper.set_model_props(model, {"preprocess": preprocess})
    onnx.checker.check_model(model)
    if external_data:
        Path(str(path) + ".data").unlink(missing_ok=True)  # onnx appends to an existing data file
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=Path(path).name + ".data", size_threshold=0)
    else:
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


# ------------------------------------------------------------------------------------ helpers shared by test modules
def save_tiny_model(path, dim, seed):
    """(x - 127.5) / 128 -> 8x8 average pooling -> linear: a real model whose embedding follows the pixels."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((112, 112, 3))
    x = keras.layers.Rescaling(1 / 128, offset=-127.5 / 128)(inp)
    x = keras.layers.AveragePooling2D(8)(x)
    x = keras.layers.Flatten()(x)
    out = keras.layers.Dense(dim)(x)
    keras.Model(inp, out).save(path)
    return path


def person(identity: int, shot: int, size=112):
    """A synthetic 'aligned face' uint8 [size, size, 3]: a fixed random pattern per identity plus per-photo noise."""
    import cv2
    import numpy as np

    base = np.random.default_rng(identity).uniform(0, 255, (14, 14, 3))
    base = cv2.resize(base, (size, size), interpolation=cv2.INTER_LINEAR)
    noise = np.random.default_rng(1000 * identity + shot + 1).normal(0, 12, base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def write_png(path, image):
    """Write an RGB uint8 image as PNG (parents created); returns path."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


def png_header_only(w, h) -> bytes:
    """A PNG whose IHDR claims w x h and holds no pixel data: enough for a size check that must fire before any
    decoding."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def bin_with_one_odd_crop(path, odd: int = 5, odd_size: int = 100, num_pairs: int = 10) -> Path:
    """An InsightFace-style .bin (pickle of JPEG bytes, issame) of `num_pairs` pairs of synthetic 112x112 faces
    (`person`; pair k: same person when k is even), where image `odd` (counted from 0) is saved at odd_size^2."""
    import pickle

    import cv2

    images, issame = [], []
    for k in range(num_pairs):
        same = k % 2 == 0
        images += [person(k, 0), person(k, 1) if same else person(k + 1, 0)]
        issame.append(same)
    images[odd] = cv2.resize(images[odd], (odd_size, odd_size), interpolation=cv2.INTER_AREA)
    encoded = [cv2.imencode(".jpg", cv2.cvtColor(im, cv2.COLOR_RGB2BGR))[1].tobytes() for im in images]
    path.write_bytes(pickle.dumps((encoded, issame), protocol=4))
    return path


def lfw_style_heldout(root: Path) -> Path:
    """4 held-out synthetic identities as <Name>/<Name>_NNNN.jpg + an LFW-format pairs.txt (2 folds of 3 same and
    3 different pairs); returns root (root / "pairs.txt" is the pairs file)."""
    from mobiface_tf.data.synthetic import render_identity
    from mobiface_tf.data.tfrecord import encode_jpeg

    names = [f"held{i}" for i in range(4)]
    for i, n in enumerate(names):
        (root / n).mkdir(parents=True)
        for k, img in enumerate(render_identity(seed=9, identity=i, num_images=3), start=1):
            (root / n / f"{n}_{k:04d}.jpg").write_bytes(encode_jpeg(img))
    lines = ["2\t3"]
    for f in range(2):
        lines += [f"{names[(f + j) % 4]}\t1\t{2 + j % 2}" for j in range(3)]
        lines += [f"{names[j]}\t1\t{names[(j + 1 + f) % 4]}\t2" for j in range(3)]
    (root / "pairs.txt").write_text("\n".join(lines) + "\n")
    return root


def checkpoint_float_vars(ckpt_prefix) -> dict:
    """{name: array} of every floating variable in a checkpoint (weights, BN statistics, optimizer slots)."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(ckpt_prefix))
    return {n: reader.get_tensor(n) for n, d in reader.get_variable_to_dtype_map().items()
            if d.is_floating and not n.startswith("_CHECKPOINTABLE_OBJECT_GRAPH")}


def kill_after_first_checkpoint(cmd, model_dir, env, timeout: float = 240):
    """Start the training command `cmd` (whose --model_dir is `model_dir`) and SIGKILL it as soon as its first
    checkpoint is indexed; returns the newest checkpoint prefix it left (None if it wrote none)."""
    import signal
    import subprocess
    import time

    import tensorflow as tf

    victim = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    index = Path(model_dir) / "checkpoints" / "checkpoint"
    deadline = time.time() + timeout
    while not index.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    return tf.train.latest_checkpoint(str(Path(model_dir) / "checkpoints"))


def train_config(data, model_dir, **settings):
    """A TrainConfig for `data` (shards) and `model_dir` with TrainConfig field overrides (not yet validated)."""
    from mobiface_tf.training.config import TrainConfig

    return TrainConfig(data=str(data), model_dir=str(model_dir), **settings)


def interrupt_when(cmd, ready, env=None, cwd=None, timeout: float = 240):
    """Ctrl-C as a terminal sends it: start `cmd` as a foreground job (its own process group, SIGINT at its
    default), wait until `ready(proc)` is true, then send SIGINT to the whole group (workers included) and wait.
    Returns (returncode, stdout, stderr, readied): readied is False when the command ended (or the timeout
    passed) before `ready`, and then no signal was sent."""
    import os
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + timeout
    readied = False
    while proc.poll() is None and time.time() < deadline:
        if ready(proc):
            readied = True
            os.killpg(proc.pid, signal.SIGINT)
            break
        time.sleep(0.05)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    return proc.returncode, out, err, readied


def process_has_loaded(pid: int, library: str) -> bool:
    """Whether the process `pid` has a shared library whose path contains `library` mapped (Linux /proc)."""
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False




def write_cfp_layout(root: Path, frontal, profile, splits, names=None) -> Path:
    """A CFP-layout benchmark under root (Sengupta et al., 2016; see mobiface_tf.data.verification.cfp).

    frontal, profile: lists of (person number, image), image an RGB uint8 array (written as PNG data in a .jpg
    name, as any decoder reads it by content) or a file to copy; photo n (1-based) of each list is that list's
    number n. splits: {"FF" or "FP": [(same pairs, diff pairs) for each fold]}, pairs as (i, j) numbers.
    Returns root.
    """
    import shutil

    import cv2

    proto = root / "Protocol"
    proto.mkdir(parents=True)
    for kind, photos, list_name in (("frontal", frontal, "Pair_list_F.txt"), ("profile", profile, "Pair_list_P.txt")):
        lines, shots = [], {}
        for n, (who, image) in enumerate(photos, 1):
            shots[who] = shots.get(who, 0) + 1
            rel = f"Data/Images/{who:03d}/{kind}/{shots[who]:02d}.jpg"
            dst = root / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(image, (str, Path)):
                shutil.copyfile(image, dst)
            else:
                dst.write_bytes(cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes())
            lines.append(f"{n} ../{rel}")
        (proto / list_name).write_text("\n".join(lines) + "\n")
    for protocol, folds in splits.items():
        for k, (same, diff) in enumerate(folds, 1):
            folder = proto / "Split" / protocol / f"{k:02d}"
            folder.mkdir(parents=True)
            (folder / "same.txt").write_text("\n".join(f"{i},{j}" for i, j in same) + "\n")
            (folder / "diff.txt").write_text("\n".join(f"{i},{j}" for i, j in diff))  # no final newline, as CFP's
    people = sorted({who for who, _ in [*frontal, *profile]})
    (root / "Data" / "list_name.txt").write_text("\n".join(names or [f"Person {p}" for p in people]) + "\n")
    return root


def child_pids(pid: int) -> list[int]:
    """The live direct children of process `pid` (Linux /proc)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:  # fields after "(comm)": state, ppid, ...
            kids.append(int(stat.parent.name))
    return kids


def ignores_signal(pid: int, signum: int) -> bool:
    """Whether process `pid` has `signum` set to ignored (SIG_IGN), from its /proc status SigIgn mask."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


