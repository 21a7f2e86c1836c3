"""int8 activation ranges: the quantisation error formula against TensorFlow's own fake-quant op, the MSE range
search against brute force, and the whole int8 export with MSE ranges against the converter's min/max on a
network with heavy-tailed activations (no ../shared needed)."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from mobiface_tf.export import convert, ranges
from mobiface_tf import litert


@pytest.mark.parametrize("lo,hi", [(-1.3, 2.7), (0.0, 5.0), (-4.0, 0.5), (-0.02, 0.03)])
def test_quantization_mse_matches_tensorflow_fake_quant(lo, hi):
    """Outside oracle: tf.quantization.fake_quant_with_min_max_vars (8 bits, zero nudged onto the grid, values
    outside clipped) is the affine int8 quantisation TFLite applies to activations."""
    values = np.random.default_rng(0).normal(0, 1.5 * max(hi, -lo), 20000)
    fq = tf.quantization.fake_quant_with_min_max_vars(tf.constant(values, tf.float32), lo, hi, num_bits=8).numpy()
    oracle = float(np.mean((values - fq.astype(np.float64)) ** 2))
    assert ranges.quantization_mse(values, lo, hi) == pytest.approx(oracle, rel=1e-3)


def test_mse_range_clips_heavy_tails_and_keeps_uniform_ranges():
    rng = np.random.default_rng(1)
    heavy = rng.laplace(0, 1, 1_000_000)  # Laplace(0, b=1): min/max near +-14
    lo, hi = heavy.min(), heavy.max()
    new_lo, new_hi = ranges.mse_range(heavy, lo, hi)
    # Outside formula: the MSE-optimal 8-bit clip of a Laplace(b) is +-9.89 b (Banner et al. 2019, "Post training
    # 4-bit quantization of convolutional networks for rapid-deployment", sec. 3). Our grid steps 2.5 % of max.
    assert new_hi == pytest.approx(9.89, abs=0.8) and new_lo == pytest.approx(-9.89, abs=0.8), (new_lo, new_hi)
    assert ranges.quantization_mse(heavy, new_lo, new_hi) < 0.8 * ranges.quantization_mse(heavy, lo, hi)
    # The search reaches the best pair of the whole grid (within 1 %).
    sub = heavy[:100_000]
    s_lo, s_hi = ranges.mse_range(sub, sub.min(), sub.max())
    best = min(ranges.quantization_mse(sub, sub.min() * a, sub.max() * b)
               for a in ranges.CLIP_FRACTIONS for b in ranges.CLIP_FRACTIONS)
    assert ranges.quantization_mse(sub, s_lo, s_hi) <= 1.01 * best

    uniform = rng.uniform(-1, 3, 200000)  # nothing to gain from clipping a uniform distribution
    u_lo, u_hi = ranges.mse_range(uniform, uniform.min(), uniform.max())
    assert u_hi - u_lo >= 0.95 * (uniform.max() - uniform.min())

    relu = np.maximum(rng.laplace(0, 1, 100000), 0)  # one-sided: the low end stays at 0
    r_lo, r_hi = ranges.mse_range(relu, 0.0, relu.max())
    assert r_lo == 0.0 and 0 < r_hi < relu.max()


def _heavy_tailed_net():
    """conv -> cube (a Gaussian cubed is heavy-tailed, like a trained face net's activations) -> conv -> GAP."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((24, 24, 3))
    x = keras.layers.Rescaling(1 / 64.0, offset=-2.0)(inp)
    x = keras.layers.Conv2D(16, 3, padding="same", name="c1")(x)
    x = keras.layers.Multiply()([x, x])
    x = keras.layers.Multiply()([x, keras.layers.Conv2D(16, 1, name="c2")(x)])
    x = keras.layers.Conv2D(32, 3, padding="same", name="c3")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(16, name="emb")(x))


def _float32_tensors(content: bytes) -> int:
    return sum(d["dtype"] == np.float32 for d in litert.make_interpreter(content).get_tensor_details())


def test_int8_export_with_mse_ranges_beats_minmax():
    """The same network, calibration and test images: MSE ranges give a smaller embedding error than the
    converter's min/max, and the graph is still full int8 (float32 only at the input and the output)."""
    model = _heavy_tailed_net()
    rng = np.random.default_rng(2)
    calib = rng.uniform(0, 255, (64, 24, 24, 3)).astype(np.float32)
    test = rng.uniform(0, 255, (32, 24, 24, 3)).astype(np.float32)
    ref = np.asarray(model(test))
    assert _float32_tensors(convert.to_tflite(model, "none")) > 10  # the check below can tell float from int8
    errors = {}
    for method in convert.ACTIVATION_RANGES:
        stats = {}
        content = convert.to_tflite(model, "int8", calib, activation_ranges=method, stats=stats)
        assert _float32_tensors(content) == 2, method
        out = litert.run_batched(litert.make_interpreter(content), test)
        errors[method] = float(np.mean((out - ref) ** 2) / np.mean(ref ** 2))
        if method == "minmax":
            assert stats == {}
        else:
            assert stats["tensors"] >= 5 and stats["calibrator_wider"] >= 1, stats
            assert (stats["range_kept_fraction_median"] < 1) == (method == "mse"), stats
    print("relative embedding MSE: " + ", ".join(f"{k} {v:.5f}" for k, v in errors.items()))
    assert errors["mse"] < 0.7 * errors["minmax"] and errors["mse"] < errors["observed"], errors


def test_split_conversion_equals_the_converter(monkeypatch):
    """Guard on the private TF API sequence (calibrate only, edit, MLIR quantiser): with the calibrator's
    ranges left as they are it gives the converter's own int8 model: same tensors, dtypes and quantisation
    parameters, identical outputs; also with int8 input and output."""
    model = _heavy_tailed_net()
    rng = np.random.default_rng(3)
    calib = rng.uniform(0, 255, (16, 24, 24, 3)).astype(np.float32)
    test = rng.uniform(0, 255, (4, 24, 24, 3)).astype(np.float32)
    original = ranges.clip_activation_ranges
    monkeypatch.setattr(ranges, "clip_activation_ranges",
                        lambda calibrated, images, method="mse", seed=0: original(calibrated, images, "minmax"))
    for io in convert.INT8_IO:
        split = convert.to_tflite(model, "int8", calib, int8_io=io, activation_ranges="mse")
        stock = convert.to_tflite(model, "int8", calib, int8_io=io, activation_ranges="minmax")

        def tensors(content):
            return [(d["name"], d["dtype"], tuple(np.round(d["quantization_parameters"]["scales"], 12)),
                     tuple(d["quantization_parameters"]["zero_points"]))
                    for d in litert.make_interpreter(content).get_tensor_details()]

        assert tensors(split) == tensors(stock), io
        assert litert.op_counts(split) == litert.op_counts(stock), io
        a = litert.run_batched(litert.make_interpreter(split), test)
        b = litert.run_batched(litert.make_interpreter(stock), test)
        assert np.array_equal(a, b), io
    assert litert.make_interpreter(split).get_input_details()[0]["dtype"] == np.int8


def test_unknown_activation_ranges_is_refused():
    with pytest.raises(ValueError, match="activation_ranges"):
        convert.to_tflite(_heavy_tailed_net(), "int8", np.zeros((2, 24, 24, 3), np.float32), activation_ranges="kl")
