"""The three networks: shapes, pinned parameter counts, layer names, MACs, save/load and TFLite parity."""
import numpy as np
import pytest
import keras
from tensorflow.python.framework import ops as tf_ops

from mobiface_tf.export.convert import frozen_function
from mobiface_tf.models import build, count_macs
from mobiface_tf.models.zoo import CONFIGS, build_config, static_row

# Pinned from our builders (model.count_params(): all weights incl. BN moving statistics) and MACs
# (conv + depthwise + dense). A change in any of these is an architecture change: update deliberately.
PINNED = {
    #                     params      MACs
    "mobiface_fc":        (15_152_896, 244_532_736),
    "mobiface_gdc":       (2_597_120, 231_974_912),
    "mobiface_gap":       (2_569_984, 231_949_824),
    "mobilefacenet":      (1_022_720, 220_965_376),
    "mobilefacenet_512":  (1_220_864, 221_161_984),
    "mobilenet_v1_gdc":   (3_775_680, 148_419_840),
    "mobilenet_v1_fc":    (11_619_520, 156_267_776),
    "mobilenet_v1_fc_s1": (28_921_024, 225_929_984),
}


@pytest.fixture(scope="module")
def models():
    keras.utils.set_random_seed(0)
    return {name: build_config(name) for name in CONFIGS}


def test_every_config_is_pinned():
    assert set(PINNED) == set(CONFIGS)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_param_and_mac_counts(models, name):
    model = models[name]
    assert (model.count_params(), count_macs(model)) == PINNED[name]


def _table_i_body_params():
    """MobiFace's convolutional body counted from Table I by hand (not from our builder): every conv without
    bias, then BN (gamma, beta, moving mean, moving variance) and a per-channel PReLU, except the linear
    projections (BN only)."""
    def conv(k, cin, cout, act=True):
        return k * k * cin * cout + 4 * cout + (cout if act else 0)

    def block(cin, expand, out):  # 1x1 expand -> 3x3 depthwise -> 1x1 linear projection
        return conv(1, cin, expand) + (9 * expand + 5 * expand) + conv(1, expand, out, act=False)

    total = conv(3, 3, 64) + (9 * 64 + 5 * 64)  # 3x3 conv /2, 64; 3x3 depthwise, 64
    cin = 64
    for expand, out, rblocks in [(128, 64, 2), (256, 128, 3), (512, 256, 6)]:  # Block /2, then RBlocks
        total += block(cin, expand, out) + rblocks * block(out, expand, out)
        cin = out
    return total + conv(1, 256, 512)  # 1x1 conv to 512


def test_pinned_counts_against_table_i(models):
    """Independent oracles for the pins: the body from Table I (2,305,792), the literal FC head a
    Flatten(7x7x512) -> Dense(512) kernel of 25,088 x 512 without bias (BN follows), then BN(512)."""
    body = _table_i_body_params()
    assert body == 2_305_792
    fc = models["mobiface_fc"]
    names = [l.name for l in fc.layers]
    assert sum(l.count_params() for l in fc.layers[: names.index("head_prelu") + 1]) == body
    assert [tuple(w.shape) for w in fc.get_layer("embedding_dense").weights] == [(7 * 7 * 512, 512)]
    assert PINNED["mobiface_fc"][0] == body + 25_088 * 512 + 4 * 512 == fc.count_params()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_output_shape_and_raw_pixel_input(models, name):
    model = models[name]
    dim = CONFIGS[name][1]["embedding_dim"]
    out = model(np.random.default_rng(0).uniform(0, 255, (2, 112, 112, 3)).astype("float32"), training=False)
    assert out.shape == (2, dim)
    assert np.all(np.isfinite(out))
    # (x - 127.5) / 128 is the first layer: the exported model takes raw pixels.
    first = model.layers[1]
    assert isinstance(first, keras.layers.Rescaling)
    assert np.allclose(first(np.array([[0.0, 127.5, 255.0]], "float32")), [[-127.5 / 128, 0.0, 127.5 / 128]])


def test_mobiface_follows_table_i(models):
    model = models["mobiface_gdc"]
    shape = lambda n: tuple(model.get_layer(n).output.shape[1:])
    assert shape("stem_prelu") == (56, 56, 64)
    assert shape("stem_dw_prelu") == (56, 56, 64)
    # Each stage: Block /2 (no shortcut) then RBlocks with identity shortcuts.
    for stage, (hw, expand, out, rblocks) in enumerate([(28, 128, 64, 2), (14, 256, 128, 3), (7, 512, 256, 6)], 1):
        assert shape(f"stage{stage}_block0_expand_prelu")[-1] == expand
        assert shape(f"stage{stage}_block0_project_bn") == (hw, hw, out)
        names = {l.name for l in model.layers}
        assert f"stage{stage}_block0_add" not in names
        assert f"stage{stage}_block{rblocks}_add" in names
        assert f"stage{stage}_block{rblocks + 1}_expand_conv" not in names
    assert shape("head_prelu") == (7, 7, 512)
    # Linear projections have no activation; every conv is followed by BN; PReLU is per channel.
    for layer in model.layers:
        if isinstance(layer, keras.layers.PReLU):
            assert layer.get_weights()[0].shape == (1, 1, layer.output.shape[-1])
            assert "project" not in layer.name
        if isinstance(layer, (keras.layers.Conv2D,)) and layer.name != "embedding_linear_conv":
            assert layer.name.endswith("_conv")
            assert model.get_layer(layer.name[: -len("conv")] + "bn")


def test_stable_layer_names(models):
    names = [l.name for l in models["mobiface_fc"].layers]
    assert names[:6] == ["image", "normalize", "stem_conv", "stem_bn", "stem_prelu", "stem_dw_conv"]
    for expected in ["stage2_block1_expand_bn", "stage3_block6_project_bn", "stage3_block6_add",
                     "head_conv", "embedding_dense", "embedding_bn"]:
        assert expected in names
    assert "embedding_gdc_conv" in [l.name for l in models["mobiface_gdc"].layers]
    # Names do not depend on the model name.
    other = build("mobiface", head="fc", name="something_else")
    assert [l.name for l in other.layers] == names


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="'resnet'"):
        build("resnet")
    with pytest.raises(ValueError, match="'mlp'"):
        build("mobiface", head="mlp")
    with pytest.raises(ValueError, match="3"):
        build("mobilenet_v1", final_stride=3)


def _profiler_macs(model):
    """Independent count: TensorFlow's registered per-op float-op statistics on the frozen graph, halved."""
    graph = frozen_function(model).graph
    flops = 0
    for op in graph.get_operations():
        if op.type in ("Conv2D", "DepthwiseConv2dNative", "MatMul"):
            flops += tf_ops.get_stats_for_node_def(graph, op.node_def, "flops").value
    return flops // 2


@pytest.mark.parametrize("name", ["mobiface_fc", "mobiface_gdc", "mobilefacenet", "mobilenet_v1_gdc"])
def test_macs_match_tensorflow_profiler(models, name):
    assert count_macs(models[name]) == _profiler_macs(models[name])


def test_static_row_reports_size(models):
    row = static_row("mobiface_gdc")
    assert row["params"] == PINNED["mobiface_gdc"][0]
    assert row["fp32_mb"] == pytest.approx(4 * row["params"] / 1e6, abs=0.01)
    assert row["embedding_dim"] == 512


@pytest.mark.parametrize("name", ["mobiface_gdc", "mobilefacenet"])
def test_keras_save_load_identical(models, name, tmp_path):
    model = models[name]
    x = np.random.default_rng(1).uniform(0, 255, (3, 112, 112, 3)).astype("float32")
    path = tmp_path / f"{name}.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))


def _tflite_embed(model, x):
    from mobiface_tf import litert
    from mobiface_tf.export.convert import to_tflite
    interp = litert.make_interpreter(to_tflite(model))
    assert tuple(interp.get_input_details()[0]["shape"]) == (1, 112, 112, 3)
    return litert.run_batched(interp, x)


def _l2n(v):
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("name", ["mobiface_fc", "mobiface_gdc", "mobiface_gap", "mobilefacenet", "mobilenet_v1_gdc"])
def test_tflite_fp32_matches_keras(models, name):
    model = models[name]
    x = np.random.default_rng(2).uniform(0, 255, (4, 112, 112, 3)).astype("float32")
    expected = _l2n(model.predict(x, verbose=0))
    got = _l2n(_tflite_embed(model, x))
    assert np.max(np.abs(got - expected)) < 1e-4
