"""TFLite export: the PReLU rewrite is exact and gives one XNNPACK partition in int8, parity on real LFW faces
for every mode, the parity report, face loading (image dirs and TFRecords) and the CLI's one-line errors."""
import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from mobiface_tf.export.batchnorm import activation_stds, calibrate_batchnorm
from mobiface_tf.export.convert import to_tflite
from mobiface_tf.export.faces import load_faces
from mobiface_tf.export.parity import PARITY_MIN, ParityError, cosine
from mobiface_tf.export.pipeline import export
from mobiface_tf.export.prelu import rewrite_prelu
from mobiface_tf import litert
from mobiface_tf.models.zoo import build_config

from conftest import REPO  # noqa: E402  (the repo root, one definition for every test file)


def _toy(alphas):
    """conv -> BN -> PReLU per entry of `alphas` (slopes per channel), plus one PReLU without a BN before it."""
    keras.utils.set_random_seed(0)  # the checks below depend on the init; do not inherit earlier tests' RNG state
    inp = keras.Input((16, 16, 3))
    x = inp
    for i, alpha in enumerate(alphas):
        x = keras.layers.Conv2D(len(alpha), 3, padding="same", name=f"c{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.PReLU(shared_axes=[1, 2], name=f"p{i}")(x)
    x = keras.layers.Conv2D(8, 1, name="last")(x)
    x = keras.layers.PReLU(shared_axes=[1, 2], name="p_nobn")(x)
    model = keras.Model(inp, x)
    rng = np.random.default_rng(0)
    for i, alpha in enumerate(alphas):
        model.get_layer(f"p{i}").set_weights([np.asarray(alpha, "float32").reshape(1, 1, -1)])
        c = len(alpha)  # non-trivial BN statistics so the fold into gamma/beta is really exercised
        model.get_layer(f"bn{i}").set_weights([rng.uniform(0.5, 2, c), rng.normal(0, 1, c), rng.normal(0, 1, c),
                                               rng.uniform(0.5, 2, c)])
    model.get_layer("p_nobn").set_weights([rng.uniform(-0.5, 0.9, (1, 1, 8)).astype("float32")])
    return model


def test_rewrite_is_exact_in_every_form():
    rng = np.random.default_rng(1)
    in_range = rng.uniform(0.3, 1.0, 8)                          # within FOLD_MAX_SLOPE_RATIO -> "fold"
    above_one = np.r_[rng.uniform(0.1, 0.9, 6), 1.7, 3.0]       # a > 1: max(x, a*x) would be wrong -> "general"
    negative = np.r_[rng.uniform(0.1, 0.9, 6), -0.4, 0.0]       # a <= 0: cannot fold (c = (1-a)/a) -> "fast"
    spread = np.r_[rng.uniform(0.2, 0.9, 6), 0.01, 0.02]        # 0 < a <= 1 but a 90x spread -> "fast" (int8 range)
    model = _toy([in_range, above_one, negative, spread])
    clone, summary = rewrite_prelu(model)
    assert summary == {"fold": ["p0"], "fast": ["p2", "p3", "p_nobn"], "general": ["p1"]}
    assert not any(isinstance(l, keras.layers.PReLU) for l in clone.layers)
    x = rng.uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    want, got = np.asarray(model(x)), np.asarray(clone(x))
    assert np.abs(want).max() > 1.0  # outputs of order 1+, so the tolerance below is meaningful
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    assert np.mean(want < 0) > 0.1  # the negative side of every PReLU is exercised


def test_rewrite_mobiface_equal_within_1e5():
    keras.utils.set_random_seed(0)
    model = build_config("mobiface_gdc")
    rng = np.random.default_rng(0)
    for layer in model.layers:  # trained-like slopes, some > 1 (general form), instead of the 0.25 init
        if isinstance(layer, keras.layers.PReLU):
            alpha = rng.uniform(0.2, 0.6, layer.get_weights()[0].shape)
            alpha.flat[0] = 1.3 if layer.name.startswith("stage3") else alpha.flat[0]
            layer.set_weights([alpha.astype("float32")])
    clone, summary = rewrite_prelu(model)
    assert len(summary["general"]) == 14 and len(summary["fold"]) == 17 and not summary["fast"]
    x = rng.uniform(0, 255, (2, 112, 112, 3)).astype("float32")
    want, got = np.asarray(model(x)), np.asarray(clone(x))
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


@pytest.fixture(scope="module")
def gdc():
    keras.utils.set_random_seed(0)
    return build_config("mobiface_gdc")


@pytest.fixture(scope="module")
def faces(lfw_dir):
    return load_faces(lfw_dir, 24, seed=3)


@pytest.mark.slow
def test_int8_prelu_rewrite_gives_one_partition(gdc, faces):
    stock = litert.delegation(litert.make_interpreter(to_tflite(gdc, "int8", faces[:8])))
    assert stock["partitions"] > 1 and stock["undelegated_ops"] == {"PRELU": 31}
    clone, _ = rewrite_prelu(gdc)
    content = to_tflite(clone, "int8", faces[:8])
    assert "PRELU" not in litert.op_counts(content)
    assert litert.delegation(litert.make_interpreter(content)) == {"partitions": 1, "undelegated_ops": {}, "num_undelegated": 0}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["none", "float16", "dynamic", "int8"])
def test_parity_on_lfw_faces(gdc, faces, mode, tmp_path):
    out = tmp_path / f"gdc_{mode}.tflite"
    report = export(gdc, out, mode, faces[:16], faces[16:])  # raises ParityError under the fp32/fp16 bars
    saved = json.loads(Path(str(out) + ".parity.json").read_text())
    assert saved["parity"] == report["parity"] and saved["size_bytes"] == out.stat().st_size
    p = report["parity"]
    assert p["num_images"] == 8 and p["cosine_min"] <= p["cosine_mean"]
    if mode in PARITY_MIN:
        assert p["cosine_min"] >= PARITY_MIN[mode]
    else:  # reported only; a floor far below the 0.98 aim still catches a broken conversion
        assert p["cosine_mean"] >= 0.9
    if mode == "int8":
        assert report["prelu_rewrite"]["enabled"] and report["partitions"] == 1


@pytest.mark.slow
def test_int8_io_model_is_scored_by_the_embedder(gdc, faces, tmp_path):
    from mobiface_tf.embedder import load_embedder

    out = tmp_path / "gdc_int8_io.tflite"
    export(gdc, out, "int8", faces[:16], faces[16:], int8_io="int8")
    emb = load_embedder(out).embed(faces[16:])
    ref = np.asarray(gdc(faces[16:].astype("float32")))
    assert cosine(emb, ref).mean() >= 0.9


def test_parity_enforced(gdc, tmp_path, monkeypatch):
    monkeypatch.setitem(PARITY_MIN, "none", 1.5)  # unreachable: the export must fail loudly
    x = np.random.default_rng(0).uniform(0, 255, (2, 112, 112, 3)).astype("uint8")
    with pytest.raises(ParityError, match="min cosine.*nothing was written to"):
        export(gdc, tmp_path / "m.tflite", "none", parity_images=x)
    # Nothing under the output's name; the failed file and its report are kept beside it for inspection.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite.failed", "m.tflite.failed.parity.json"]
    assert json.loads((tmp_path / "m.tflite.failed.parity.json").read_text())["parity"]["cosine_min"] < 1.5


def _fp16_sensitive(path):
    """The case to-tflite-failed-parity-replaces-model's model: emb = x @ (1000 + N) - x @ 1000 with N ~ 0.01.
    Float32 keeps N; float16 weights round 1000 + N to 1000, so the float16 export gives zero embeddings (cosine 0
    against Keras) and must fail its parity check, deterministically."""
    rng = np.random.default_rng(0)
    i = keras.Input((112, 112, 3))
    x = keras.layers.Rescaling(1 / 128., offset=-127.5 / 128)(i)
    x = keras.layers.Conv2D(16, 8, strides=8, use_bias=False)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    a = keras.layers.Dense(128, use_bias=False, name="a")
    b = keras.layers.Dense(128, use_bias=False, name="b")
    model = keras.Model(i, keras.layers.Subtract()([a(x), b(x)]), name="fp16_sensitive")
    a.set_weights([(1000 + 0.01 * rng.standard_normal((16, 128))).astype(np.float32)])
    b.set_weights([np.full((16, 128), 1000, np.float32)])
    model.save(path)
    return path


def _deployed(folder):
    """A working model in service at folder/model.tflite (a tiny real export), with its threshold sidecar and its
    parity report: (model path, {path: bytes} of the three files)."""
    from conftest import person, save_tiny_model

    from mobiface_tf.sidecar import write_sidecar

    out = folder / "deploy" / "model.tflite"
    tiny = keras.models.load_model(save_tiny_model(folder / "tiny.keras", 16, 0), compile=False)
    export(tiny, out, "none", parity_images=np.stack([person(i, 0) for i in range(4)]))
    side = write_sidecar(out, {"threshold": 0.2753, "num_positive": 3000, "num_negative": 3000})
    files = [out, side, Path(f"{out}.parity.json")]
    return out, {f: f.read_bytes() for f in files}


def test_failed_parity_leaves_the_old_model_its_sidecar_and_report(tmp_path):
    """to-tflite-failed-parity-replaces-model: a float16 export that fails its parity check over a working model
    leaves the model, its threshold sidecar and its parity report byte for byte, and no temporary file; the
    failed file is kept as OUTPUT.failed and named in the error."""
    from mobiface_tf.atomic import leftover_temps
    from mobiface_tf.litert import make_interpreter

    out, before = _deployed(tmp_path)
    fp16 = keras.models.load_model(_fp16_sensitive(tmp_path / "fp16_sensitive.keras"), compile=False)
    faces = np.random.default_rng(1).uniform(0, 255, (4, 112, 112, 3)).astype(np.uint8)
    with pytest.raises(ParityError, match=r"min cosine 0\.0+ < 0\.999.*nothing was written to .*model\.tflite.*failed"):
        export(fp16, out, "float16", parity_images=faces)
    assert {f: f.read_bytes() for f in before} == before
    assert leftover_temps(out.parent) == []
    failed = Path(f"{out}.failed")
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(
        [out.name, f"{out.name}.eval.json", f"{out.name}.parity.json", failed.name, f"{failed.name}.parity.json"])
    make_interpreter(model_path=failed)  # the failed export is a whole TFLite file, kept for inspection
    assert json.loads(Path(f"{failed}.parity.json").read_text())["parity"]["cosine_min"] < 0.999


@pytest.mark.slow
def test_cli_failed_parity_leaves_the_old_model_and_sidecar(tmp_path):
    """The case's command line: to_tflite --quantize=float16 over a deployed model exits 2 with one line saying
    nothing was written, and --output, its sidecar and its report keep their bytes."""
    from conftest import person, write_png

    out, before = _deployed(tmp_path)
    faces = tmp_path / "faces"
    for i in range(4):
        write_png(faces / f"id{i}" / "0.png", person(i, 0))
    proc = _tool(f"--model={_fp16_sensitive(tmp_path / 'fp16_sensitive.keras')}", f"--output={out}",
                 "--quantize=float16", f"--parity_images={faces}", "--num_parity=4", "--noprogress")
    lines = [line for line in proc.stderr.strip().splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert "min cosine" in lines[0] and f"nothing was written to '{out}'" in lines[0]
    assert {f: f.read_bytes() for f in before} == before


def test_cli_never_replaces_a_file_that_is_not_a_tflite_model(tmp_path):
    """--output naming an existing file that is not a TFLite model (a .keras, the user's notes) stops before the
    model loads, with one line, and the file keeps its bytes."""
    from conftest import save_tiny_model

    keras_model = save_tiny_model(tmp_path / "model.keras", 16, 0)
    before = keras_model.read_bytes()
    proc = _tool(f"--model={keras_model}", f"--output={keras_model}", f"--parity_images={tmp_path}")
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith("error: --output") and "is not a TFLite model" in last, \
        proc.stderr[-2000:]
    assert keras_model.read_bytes() == before


def test_load_faces_image_dir_and_tfrecords(tmp_path):
    import cv2
    from mobiface_tf.data.synthetic import write_synthetic_tfrecords

    write_synthetic_tfrecords(tmp_path / "tfr", num_identities=2, images_per_identity=3, seed=0, shards=1)
    from_tfr = load_faces(str(tmp_path / "tfr" / "*.tfrecord"), 4)
    assert from_tfr.shape == (4, 112, 112, 3) and from_tfr.dtype == np.uint8
    assert load_faces(tmp_path / "tfr", 100).shape[0] == 6  # a shard directory works too
    # A seeded sample spanning the shards and identities (records are stored grouped by identity), the same for
    # one seed and different for another: calibration (seed 0) and parity (seed 1) faces are not the same faces.
    import tensorflow as tf
    from mobiface_tf.data.tfrecord import parse_example

    write_synthetic_tfrecords(tmp_path / "many", num_identities=20, images_per_identity=10, seed=0, shards=4)
    label_of = {}
    for serialized in tf.data.TFRecordDataset(sorted(str(f) for f in (tmp_path / "many").glob("*.tfrecord"))):
        image, label = parse_example(serialized)
        label_of[image.numpy().tobytes()] = int(label)
    a, b = (load_faces(tmp_path / "many", 20, seed=s) for s in (0, 1))
    tf.random.set_seed(123)  # training sets TF's global seed; the sample must not depend on it
    a2 = load_faces(tmp_path / "many", 20, seed=0)
    assert np.array_equal(a, a2) and not np.array_equal(a, b)
    people = {label_of[f.tobytes()] for f in a}
    assert len(people) >= 8, sorted(people)  # the first 20 records in storage order hold 2 people
    shared = {f.tobytes() for f in a} & {f.tobytes() for f in b}
    assert len(shared) <= 5, len(shared)
    (tmp_path / "img" / "a").mkdir(parents=True)
    rgb = np.zeros((112, 112, 3), np.uint8)
    rgb[..., 0] = 200  # red
    cv2.imwrite(str(tmp_path / "img" / "a" / "x.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    got = load_faces(tmp_path / "img", 5)
    assert got.shape == (1, 112, 112, 3) and got[0, 0, 0].tolist() == [200, 0, 0]  # RGB, not BGR


def _tool(*args):
    return subprocess.run([sys.executable, str(REPO / "tools" / "to_tflite.py"), *args], capture_output=True,
                          text=True, timeout=300, cwd=REPO, env={"TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("args, message", [
    (["--model=/nonexistent/m.keras"], "--model='/nonexistent/m.keras' does not exist"),
    (["--backbone=resnet50"], "--backbone='resnet50': unknown network 'resnet50'; expected a zoo name"),
    (["--backbone=mobiface_gdc", "--head=fc"], "network 'mobiface_gdc' has head 'gdc', not 'fc'"),
    (["--backbone=mobiface_gdc", "--quantize=int8", "--calibration={empty}"], "no images"),
])
def test_cli_bad_inputs_one_line_error(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    args = [a.format(empty=tmp_path / "empty") for a in args]
    proc = _tool(*args, f"--output={tmp_path / 'o.tflite'}", f"--parity_images={tmp_path / 'empty'}")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and message in last, proc.stderr[-500:]
    assert not (tmp_path / "o.tflite").exists()


@pytest.mark.slow
def test_cli_export_fp32_with_parity_report(tmp_path, lfw_dir):
    out = tmp_path / "m.tflite"
    proc = _tool("--backbone=mobiface", "--head=gap", "--embedding_dim=128", f"--output={out}",
                 f"--parity_images={lfw_dir}", "--num_parity=4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(Path(str(out) + ".parity.json").read_text())
    assert report["quantize"] == "none" and report["partitions"] == 1
    assert report["parity"]["cosine_min"] >= 0.9999


def test_calibrate_batchnorm_restores_unit_scale():
    """Tiny weights make the activations vanish (as in a random deep net); calibration brings them to O(1)."""
    inp = keras.Input((16, 16, 3))
    x = inp
    for i in range(4):
        x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name=f"c{i}",
                                kernel_initializer=keras.initializers.RandomNormal(0, 0.01, seed=i))(x)
        x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-7, name=f"bn{i}")(x)  # eps << the tiny variances
        x = keras.layers.ReLU()(x)
    model = keras.Model(inp, x)
    images = np.random.default_rng(0).uniform(0, 1, (16, 16, 16, 3)).astype("float32")
    assert activation_stds(model, images)["bn3"] < 1e-4  # shrinking with depth: the failure mode fixed here
    kernels = [model.get_layer(f"c{i}").get_weights()[0].copy() for i in range(4)]
    info = calibrate_batchnorm(model, images, steps=3, batch_size=8)
    assert info == {"steps": 3, "batch_size": 8, "num_bn": 4}
    for std in activation_stds(model, images).values():
        assert 0.5 < std < 2.0
    for i in range(4):  # only BN statistics change
        assert np.array_equal(model.get_layer(f"c{i}").get_weights()[0], kernels[i])
        assert model.get_layer(f"bn{i}").momentum == 0.9  # restored
    with pytest.raises(ValueError, match="steps=0"):
        calibrate_batchnorm(model, images, steps=0)


@pytest.mark.slow
def test_calibrated_mobilenet_v1_int8_is_not_zero(faces, tmp_path):
    """Random-init MobileNetV1-GDC: int8 output was all zeros (cosine 0); after BN calibration it is a real embedding.

    The cosine stays far below a trained network's (a BN-normalised random ReLU net is chaotic: float input noise
    of 0.5 grey levels alone drops its cosine to ~0.3, see README), so the check is "not zero", not ">= 0.98".
    """
    keras.utils.set_random_seed(0)
    model = build_config("mobilenet_v1_gdc")
    assert min(activation_stds(model, faces[:4]).values()) < 1e-6
    calibrate_batchnorm(model, faces[:16], steps=2, batch_size=16)
    stds = activation_stds(model, faces[16:])
    assert all(0.3 < s < 3.0 for s in stds.values()), stds
    out = tmp_path / "v1_int8.tflite"
    report = export(model, out, "int8", faces[:16], faces[16:], enforce=False)
    assert report["partitions"] == 1
    got = litert.run_batched(litert.make_interpreter(model_path=out), faces[16:].astype("float32"))
    want = np.asarray(model(faces[16:].astype("float32")))
    norms = np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert np.all((norms > 0.5) & (norms < 2.0)), norms
    assert report["parity"]["cosine_mean"] > 0.1


def test_export_over_a_model_drops_its_stale_sidecar(tmp_path):
    """stale-threshold-sidecar-after-model-replaced: to_tflite writing to a path whose old model had a threshold
    sidecar removes it (the threshold belonged to the old model); a re-export of the same bytes keeps it."""
    from conftest import person, save_tiny_model

    from mobiface_tf.sidecar import sidecar_path, write_sidecar

    out = tmp_path / "model.tflite"
    out.write_bytes(b"the first, untrained export")
    side = write_sidecar(out, {"threshold": -0.03, "num_positive": 300, "num_negative": 300})
    tiny = keras.models.load_model(save_tiny_model(tmp_path / "tiny.keras", 16, 0), compile=False)
    faces = np.stack([person(i, 0) for i in range(4)])
    export(tiny, out, "none", parity_images=faces)
    assert not side.exists()
    write_sidecar(out, {"threshold": 0.3, "num_positive": 300, "num_negative": 300})
    export(tiny, out, "none", parity_images=faces)  # the same bytes again: the sidecar still fits
    assert sidecar_path(out).is_file()
