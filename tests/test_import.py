"""tools/import_model.py / mobiface_tf.importer: a published MobileFaceNet into the Keras network, exact or refused."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO  # noqa: E402  (the repo root, one definition for every test file)


# ------------------------------------------------------------------------------------------------ helpers
def _randomise(model, seed=0):
    """Give every BN non-trivial statistics and every PReLU its own slopes (a random-init network has BN at
    identity and all slopes 0.25, which would hide a mix-up of BN fields or slopes)."""
    from keras import layers

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c), rng.normal(0, 0.1, c),
                               rng.uniform(0.5, 1.5, c)])
        elif isinstance(layer, layers.PReLU):
            layer.set_weights([rng.uniform(0.0, 0.5, layer.weights[0].shape)])
    return model


def keras_to_onnx(model, path, convention="graph"):
    """Write the project's Keras network as an NCHW ONNX graph with the onnx helper API, the way an MXNet /
    PyTorch export looks: Conv (group=C for depthwise) with explicit pads, separate BatchNormalization, PRelu,
    Add, and the linear 1x1 conv on the 1x1 GDC output as Flatten -> Gemm.

    convention "graph": the graph subtracts 127.5 and multiplies by 1/128 (like InsightFace's) and takes raw
    RGB. "bgr_minus1to1": no normalisation in the graph, metadata preprocess=bgr_minus1to1, and the stem kernel
    rewritten so that the ONNX model on (BGR - 127.5) / 127.5 computes what the Keras model computes on RGB.
    """
    import onnx
    from keras import layers as L
    from onnx import TensorProto, helper, numpy_helper

    from mobiface_tf.importer.graph import same_pads

    nodes, inits, names = [], [], {}

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), name))
        return name

    h, w = model.input_shape[1:3]
    first_conv = True
    for layer in model.layers:
        out = layer.name
        if isinstance(layer, L.InputLayer):
            names[id(layer.output)] = "image"
            continue
        src = [names[id(t)] for t in (layer.input if isinstance(layer.input, list) else [layer.input])]
        if isinstance(layer, L.Rescaling):
            if convention == "graph":
                nodes += [helper.make_node("Sub", [src[0], const("mean", 127.5)], ["centred"]),
                          helper.make_node("Mul", ["centred", const("scale", 1 / 128)], [out])]
            else:
                out = src[0]
        elif isinstance(layer, L.ZeroPadding2D):
            (t, b), (lf, rt) = layer.padding
            pads = numpy_helper.from_array(np.array([0, 0, t, lf, 0, 0, b, rt], np.int64), f"{out}_pads")
            inits.append(pads)
            nodes.append(helper.make_node("Pad", [src[0], pads.name], [out]))
        elif isinstance(layer, (L.Conv2D, L.DepthwiseConv2D)):
            k = layer.kernel.numpy()
            in_hw = layer.input.shape[1:3]
            if first_conv and convention == "bgr_minus1to1":
                k = k[:, :, ::-1, :] * (127.5 / 128)
            first_conv = False
            if isinstance(layer, L.DepthwiseConv2D):
                wt, group = k.transpose(2, 3, 0, 1), k.shape[2]
            else:
                wt, group = k.transpose(3, 2, 0, 1), 1
            if tuple(in_hw) == (1, 1) and k.shape[:2] == (1, 1) and group == 1:
                nodes += [helper.make_node("Flatten", [src[0]], [f"{out}_flat"]),
                          helper.make_node("Gemm", [f"{out}_flat", const(f"{out}_W", wt[:, :, 0, 0])], [out],
                                           transB=1)]
            else:
                pt = (*same_pads(in_hw[0], k.shape[0], layer.strides[0]),
                      *same_pads(in_hw[1], k.shape[1], layer.strides[1])) if layer.padding == "same" else (0,) * 4
                nodes.append(helper.make_node("Conv", [src[0], const(f"{out}_W", wt)], [out], group=int(group),
                                              kernel_shape=list(k.shape[:2]), strides=list(layer.strides),
                                              pads=[pt[0], pt[2], pt[1], pt[3]]))
        elif isinstance(layer, L.BatchNormalization):
            g, b, m, v = layer.get_weights()
            nodes.append(helper.make_node("BatchNormalization", [src[0]] + [const(f"{out}_{n}", a) for n, a in
                                          zip("gbmv", (g, b, m, v))], [out], epsilon=float(layer.epsilon)))
        elif isinstance(layer, L.PReLU):
            nodes.append(helper.make_node("PRelu", [src[0], const(f"{out}_slope", layer.get_weights()[0]
                                                                  .reshape(-1, 1, 1))], [out]))
        elif isinstance(layer, L.ReLU):
            nodes.append(helper.make_node("Relu", [src[0]], [out]))
        elif isinstance(layer, L.Add):
            nodes.append(helper.make_node("Add", src, [out]))
        elif isinstance(layer, L.Flatten):
            nodes.append(helper.make_node("Flatten", [src[0]], [out]))
        else:
            raise AssertionError(f"no ONNX form for {layer.name} ({type(layer).__name__})")
        names[id(layer.output)] = out
    final = names[id(model.output)]
    nodes.append(helper.make_node("Identity", [final], ["embedding"]))
    graph = helper.make_graph(nodes, model.name, [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                                [None, 3, h, w])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT,
                                                            [None, int(model.output_shape[-1])])], initializer=inits)
    onx = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if convention != "graph":
        helper.set_model_props(onx, {"preprocess": convention})
    onnx.checker.check_model(onx)
    onnx.save(onx, str(path))
    return Path(path)


def _cosines(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


# -------------------------------------------------------------------------------------------------- tests
@pytest.mark.slow
def test_import_reference_tflite_matches_it_on_real_faces(reference_tflite, lfw_dir, tmp_path):
    """The publisher's TFLite (BN folded, PReLU as MAXIMUM/MINIMUM/MUL/ADD, MXNet's symmetric pads, -127.5 * 1/128
    in the graph) imports into a .keras that takes raw RGB and gives the same embedding on real LFW faces."""
    from mobiface_tf.embedder import load_embedder, stated_preprocess
    from mobiface_tf.export.faces import load_faces
    from mobiface_tf.commands.import_model import run

    out = tmp_path / "imported.keras"
    report = run(str(reference_tflite), str(out), check_faces=str(lfw_dir), num_check=8, bn_faces=str(lfw_dir),
                 num_bn_faces=32)
    assert report["padding"] == "symmetric" and report["layers"] == 50 and report["residual_adds"] == 12
    assert report["bn_recalibrated"] == 50  # every BN held a folded bias
    assert (tmp_path / "imported.keras.import.json").is_file()
    # Independent of the importer's own check: other faces, the saved file reloaded the way the offline teacher path
    # (prepare_data --add_teacher) and the CLIs load it, the source run by LiteRT.
    faces = load_faces(lfw_dir, 40, seed=7).astype(np.float32)
    assert stated_preprocess(out) is None  # so add_teacher / evaluate feed it raw RGB, which is right
    emb = load_embedder(out, "raw", batch_size=8)
    model, ours = emb.model, emb.embed_raw(faces)
    theirs = load_embedder(reference_tflite, "raw", batch_size=8).embed_raw(faces)
    assert _cosines(ours, theirs).min() >= 0.9999
    # With the recalibrated BN statistics, training mode (batch statistics) computes nearly the same embeddings:
    # fine-tuning starts from the published network, not from a scrambled one.
    assert _cosines(np.asarray(model(faces, training=True)), ours).mean() >= 0.9  # identity statistics: ~0.55


SAME_GRAPH, SYMMETRIC_BGR = ("same", "graph"), ("symmetric", "bgr_minus1to1")


@pytest.fixture(scope="module")
def onnx_import(request, tmp_path_factory):
    """(original Keras network, its ONNX export, the imported model, report, saved .keras path)."""
    import keras

    from mobiface_tf import importer, models

    padding, convention = request.param
    tmp = tmp_path_factory.mktemp(f"onnx_{padding}")
    keras.utils.set_random_seed(3)
    original = _randomise(models.build("mobilefacenet", embedding_dim=64, padding=padding))
    src = keras_to_onnx(original, tmp / "mfn.onnx", convention)
    model, report = importer.import_model(src, num_check=4)
    model.save(tmp / "imported.keras")
    return dict(original=original, convention=convention, padding=padding, model=model, report=report,
                keras=tmp / "imported.keras")


@pytest.mark.slow
@pytest.mark.parametrize("onnx_import", [SAME_GRAPH, SYMMETRIC_BGR], ids=["same-graph", "symmetric-bgr"],
                         indirect=True)
def test_import_onnx_built_with_onnx_helpers(onnx_import):
    """An NCHW ONNX MobileFaceNet with unfolded BN and PRelu nodes (built from a Keras network's weights)
    imports back to exactly those weights: kernels, BN statistics, slopes, the Gemm as the linear 1x1 conv,
    and the input convention (in-graph Sub/Mul, or BGR (x-127.5)/127.5 stated in metadata)."""
    from mobiface_tf import importer

    original, model, report = onnx_import["original"], onnx_import["model"], onnx_import["report"]
    assert report["padding"] == onnx_import["padding"]
    assert report["source_preprocess"] == ("raw" if onnx_import["convention"] == "graph" else "bgr_minus1to1")
    assert report["cosine_min"] >= 0.9999
    for a, b in zip(original.weights, model.weights):
        assert a.shape == b.shape
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5, atol=1e-5, err_msg=a.path)
    x = importer.synthetic_images(4, seed=9)
    assert _cosines(model.predict(x, verbose=0), original.predict(x, verbose=0)).min() >= 0.9999


@pytest.mark.slow
@pytest.mark.parametrize("onnx_import", [SAME_GRAPH], ids=["same-graph"], indirect=True)
def test_imported_keras_runs_as_teacher_inside_the_training_step(onnx_import, tmp_path):
    """Item 5: an imported .keras is a frozen teacher called in the same tf.function as the student; its targets
    equal its own predictions, its weights do not move, and distilling from it lowers the student's loss."""
    import keras
    import tensorflow as tf

    from mobiface_tf import importer
    from mobiface_tf.teacher import OnlineTeacher

    online = OnlineTeacher(onnx_import["keras"])
    assert not online.in_pipeline  # a .keras teacher runs inside the training step
    teacher = online.embedder.model
    before = [w.numpy().copy() for w in teacher.weights]
    keras.utils.set_random_seed(0)
    inp = keras.Input((112, 112, 3))
    x = keras.layers.Rescaling(1 / 128, offset=-127.5 / 128)(inp)
    x = keras.layers.AveragePooling2D(8)(x)
    student = keras.Model(inp, keras.layers.Dense(teacher.output_shape[-1])(keras.layers.Flatten()(x)))
    opt = keras.optimizers.SGD(0.5)
    images = tf.constant(importer.synthetic_images(8, seed=4))

    @tf.function
    def step(batch):
        with tf.GradientTape() as tape:
            target = online.embed_in_graph(batch)
            emb = tf.math.l2_normalize(student(batch, training=True), axis=1)
            loss = tf.reduce_mean(1.0 - tf.reduce_sum(emb * target, axis=1))
        opt.apply(tape.gradient(loss, student.trainable_variables), student.trainable_variables)
        return loss, target

    losses = []
    for _ in range(8):
        loss, target = step(images)
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0], losses
    ref = teacher.predict(images.numpy(), verbose=0)
    np.testing.assert_allclose(target.numpy(), ref / np.linalg.norm(ref, axis=1, keepdims=True), atol=1e-5)
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, teacher.weights))


def test_import_refuses_wrong_embedding_size_naming_the_layer(tmp_path):
    """A MobileFaceNet with a 64-d embedding, imported as 128-d: refused at the linear 1x1 conv, with both shapes."""
    import keras

    from mobiface_tf import importer, models

    keras.utils.set_random_seed(0)
    src = keras_to_onnx(models.build("mobilefacenet", embedding_dim=64), tmp_path / "mfn64.onnx")
    with pytest.raises(importer.ImportRefused) as e:
        importer.import_model(src, embedding_dim=128)
    msg = str(e.value)
    assert "\n" not in msg and "embedding_linear_conv" in msg and "512->64" in msg and "512->128" in msg


@pytest.mark.slow
def test_cli_refuses_a_graph_that_does_not_fit_in_one_line(tmp_path):
    """MobileNetV1 (ReLU, 32 stem channels) is not MobileFaceNet: exit 2, one 'error:' line naming the first
    layer with both descriptions, and no output file."""
    import keras

    from mobiface_tf import models

    keras.utils.set_random_seed(0)
    src = keras_to_onnx(models.build("mobilenet_v1", embedding_dim=128), tmp_path / "mnv1.onnx")
    out = tmp_path / "out.keras"
    proc = subprocess.run([sys.executable, "tools/import_model.py", f"--source={src}", "--backbone=mobilefacenet",
                           f"--output={out}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: first difference at item 0"), proc.stderr
    assert "conv 3x3 3->32 stride 2" in lines[0] and "relu" in lines[0]           # the source's stem
    # the Keras one, with TF's SAME pads: the source's odd 7x7 map (SAME pads it 1/1) is no reason for "symmetric"
    assert "stem_conv is conv 3x3 3->64 stride 2 pads (0,1,0,1)" in lines[0] and "prelu" in lines[0]
    assert not out.exists() and not list(tmp_path.glob("*.keras"))


def test_cli_rejects_bad_paths_before_any_work(tmp_path):
    from mobiface_tf.commands.import_model import run

    with pytest.raises(ValueError, match="does not exist"):
        run(str(tmp_path / "missing.tflite"), str(tmp_path / "o.keras"))
    (tmp_path / "x.onnx").write_bytes(b"not onnx")
    with pytest.raises(ValueError, match="must end in .keras"):
        run(str(tmp_path / "x.onnx"), str(tmp_path / "o.h5"))
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        run(str(tmp_path / "x.onnx"), str(tmp_path / "o.keras"))


def test_quantised_tflite_is_refused_with_a_pointer_to_the_float_model(reference_tflite_uint8, tmp_path):
    """The publisher's uint8 file is not silently 'imported': one line saying it is quantised and what to do."""
    from mobiface_tf import importer
    from mobiface_tf.commands.import_model import run

    with pytest.raises(importer.ImportRefused, match="integer-quantised model. Import the float") as e:
        run(str(reference_tflite_uint8), str(tmp_path / "u8.keras"))
    assert "\n" not in str(e.value) and not list(tmp_path.iterdir())
