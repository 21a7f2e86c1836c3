"""Keras -> TFLite conversion (fp32, fp16, dynamic-range, full int8), the PReLU rewrite that lets
XNNPACK run int8 PReLU networks, and the Keras-vs-TFLite parity report. Running the .tflite, delegation
counting and op counts are mobiface_tf.litert's (TensorFlow-free); QUANTIZE_MODES lives here, with the converter.

Freezing. The graph is frozen (variables -> constants) before conversion. Converting the live
concrete function with its variables makes the converter keep large weights (the 12.8 M-weight
Table I FC kernel) as resource variables: the .tflite then has VAR_HANDLE/READ_VARIABLE ops that are
never initialised and returns NaN. Freezing first avoids that.

Batch 1. The input is fixed at [1, 112, 112, 3]: a dynamic batch put SHAPE/PACK ops into the graph
and split the XNNPACK partition in a probe.

PReLU. Keras' per-channel PReLU (relu(x) - alpha * relu(-x)) is fused by the converter into one
TFLite PRELU op. XNNPACK delegates float PRELU but not int8 PRELU, so a stock int8 MobiFace is
cut into 32 XNNPACK partitions, with the 31 PReLUs run by the builtin int8 kernel in between
(measured: int8 slower than fp32). `rewrite_prelu` replaces every per-channel PReLU before
conversion with ops XNNPACK runs in int8 (MUL, MUL+RELU, ADD), which keeps the whole int8 graph in
one partition. The rewrite is exact in float (see `ChannelPReLU`).

int8 activation ranges. By default each activation tensor's int8 range is the one with the least
quantisation error over the calibration faces' real activations, not the converter's min/max
(`clip_activation_ranges`, README "int8 that keeps the accuracy").
"""
from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

# The LiteRT side (interpreter, (de)quantisation, delegation, op counts) lives in the TensorFlow-free
# mobiface_tf.litert; re-exported here for callers of export.
from mobiface_tf.litert import delegation, make_interpreter, op_counts, run_batched  # noqa: F401
from mobiface_tf.sidecar import drop_stale_sidecar

QUANTIZE_MODES = ("none", "float16", "dynamic", "int8")  # the TFLite modes to_tflite implements
INT8_IO = ("float", "int8")
# How int8 activation ranges are set from the calibration faces: "mse" and "observed" as in
# `clip_activation_ranges`, "minmax" the converter's own calibration.
ACTIVATION_RANGES = ("mse", "observed", "minmax")
# Parity on real faces (cosine similarity Keras vs TFLite embeddings): enforced minimum per mode.
# int8 is only reported (the aim is a mean >= 0.98).
PARITY_MIN = {"none": 0.9999, "float16": 0.999}
INT8_PARITY_AIM = 0.98


class ParityError(RuntimeError):
    """An export whose TFLite embeddings disagree with Keras beyond the mode's threshold."""


# ---------------------------------------------------------------------------------------------
# Real faces for calibration and parity
# ---------------------------------------------------------------------------------------------
def load_faces(source, limit: int, seed: int = 0, size: int = 112) -> np.ndarray:
    """Up to `limit` aligned faces as uint8 RGB [N, size, size, 3] from an image dir or TFRecords.

    `source` is a directory of images (walked recursively, e.g. ../shared/data/lfw/lfw-112x112), a
    directory of *.tfrecord shards, or a TFRecord glob (the tools/prepare_data.py format). Either way
    the faces are a seeded random sample (image dir: of the sorted file list; TFRecords: of the first
    records of the shards read interleaved, see TFRECORD_SAMPLE_BUFFER_*), so the set spans many
    identities, is the same on every run for one seed (whatever TF's global seed), and two seeds give
    (nearly) different faces, e.g. calibration vs parity faces. Images are listed and decoded by mobiface_tf.images (hidden
    files skipped, EXIF orientation applied). Raises ValueError when nothing usable is found.
    """
    from mobiface_tf.images import IMAGE_EXTENSIONS, list_images

    if limit < 1:
        raise ValueError(f"number of faces must be >= 1, got {limit}")
    path = Path(str(source))
    if path.is_dir() and not any(path.glob("*.tfrecord")):
        files, _ = list_images(path)
        if not files:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {str(source)!r}; "
                             "pass a directory of aligned 112x112 face crops or a TFRecord glob")
        order = np.random.default_rng(seed).permutation(len(files))[:limit]
        return np.stack([_read_image(files[i], size) for i in sorted(order)])
    return _read_tfrecord_faces(source, limit, size, seed)


MIN_CALIBRATION = 100  # int8 calibration faces; fewer give activation ranges that clip unseen faces


def load_calibration_faces(source, num: int = MIN_CALIBRATION, allow_fewer: bool = False) -> np.ndarray:
    """`num` aligned faces uint8 [num, 112, 112, 3] for int8 calibration (load_faces: hidden files skipped).

    Raises ValueError naming `source` when it holds fewer than `num` faces, unless allow_fewer (then all of
    them, at least one).
    """
    faces = load_faces(source, num)
    if len(faces) < num and not allow_fewer:
        raise ValueError(f"--calibration={str(source)!r} holds only {len(faces)} faces; int8 calibration needs "
                         f"{num} (--num_calibration) to measure activation ranges. Add faces, or pass "
                         "--allow_few_calibration to accept a smaller set")
    return faces


def _read_image(path, size):
    import cv2

    from mobiface_tf.images import load_image_rgb  # the one decoder: EXIF orientation, grey/alpha/16-bit/CMYK

    rgb = load_image_rgb(path)
    if rgb.shape[:2] != (size, size):
        rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
    return rgb


# Records are stored grouped by identity (prepare_data writes classes in order), so the first N of a shard
# are a few people. Sampling reads the shards interleaved and draws from the first (this many per face asked
# for, capped) records, so the sample spans the data without reading all of a large set.
TFRECORD_SAMPLE_BUFFER_PER_FACE, TFRECORD_SAMPLE_BUFFER_MAX = 20, 100_000


def _read_tfrecord_faces(pattern, limit, size, seed=0):
    # Imported lazily: the data package pulls in the aligner, which export from a directory never needs.
    from mobiface_tf.data.pipeline import match_files
    from mobiface_tf.data.tfrecord import parse_example

    path = Path(str(pattern))
    files = match_files(str(path / "*.tfrecord") if path.is_dir() else str(pattern))
    # numpy does the drawing: a tf.data shuffle would also depend on TF's global seed, which training sets.
    rng = np.random.default_rng(seed)
    files = [files[i] for i in rng.permutation(len(files))]
    stream = tf.data.Dataset.from_tensor_slices(files).interleave(
        tf.data.TFRecordDataset, cycle_length=len(files), block_length=1)  # sequential: a fixed order
    buffer = min(TFRECORD_SAMPLE_BUFFER_MAX, TFRECORD_SAMPLE_BUFFER_PER_FACE * limit)
    pool = [r.numpy() for r in stream.take(buffer)]
    records = [pool[i] for i in sorted(rng.permutation(len(pool))[:limit])]
    images = []
    for serialized in records:
        image, _ = parse_example(serialized)
        image = image.numpy()
        if image.shape[:2] != (size, size):
            image = tf.image.resize(image, (size, size)).numpy().round().astype(np.uint8)
        images.append(image)
    if not images:
        raise ValueError(f"TFRecords {str(pattern)!r} hold no examples; run tools/prepare_data.py first")
    return np.stack(images)


# ---------------------------------------------------------------------------------------------
# BatchNorm statistics of a random-init network (benchmarking only)
# ---------------------------------------------------------------------------------------------
# A freshly built network has BN moving statistics mean 0, variance 1, which do not match its
# activations: through a deep random ReLU net (MobileNetV1) they shrink to ~1e-7, and a full-int8
# model then quantises them to zero (cosine 0, an implausibly fast latency). A trained network's BN
# layers normalise their inputs, so re-estimating the moving statistics on real faces gives the
# random-init benchmark the activation ranges of a trained model. Never apply this to a trained model:
# its statistics are already right (tools/to_tflite.py only calls it for --backbone).
def calibrate_batchnorm(model: keras.Model, images, steps: int = 4, batch_size: int = 32) -> dict:
    """Re-estimate every BatchNormalization's moving mean/variance on `images`, in place.

    `steps` forward passes with training=True over batches of `images` (raw RGB 0-255); at pass k
    (from 0) each BN's momentum is set to k/(k+1), so the moving statistics end as the plain average
    of the per-batch statistics. Nothing else changes: training=True only makes BN use batch
    statistics and update its moving ones (no optimizer runs; the networks have no dropout).
    Returns {"steps", "batch_size", "num_bn"}.
    """
    if steps < 1 or batch_size < 2:
        raise ValueError(f"calibrate_batchnorm needs steps >= 1 and batch_size >= 2, got steps={steps}, "
                         f"batch_size={batch_size}")
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or len(images) < 2:
        raise ValueError(f"calibrate_batchnorm needs images [N>=2, H, W, 3], got shape {images.shape}")
    bns = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    if not bns:
        return {"steps": 0, "batch_size": batch_size, "num_bn": 0}
    momenta = [bn.momentum for bn in bns]
    batch_size = min(batch_size, len(images))
    rng = np.random.default_rng(0)
    try:
        for k in range(steps):
            for bn in bns:
                bn.momentum = k / (k + 1)  # k = 0: take the batch statistics outright
            batch = images[rng.choice(len(images), batch_size, replace=False)]
            model(batch, training=True)
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
    return {"steps": steps, "batch_size": batch_size, "num_bn": len(bns)}


def activation_stds(model: keras.Model, images, kind=keras.layers.BatchNormalization) -> dict:
    """Inference-mode std of every `kind` layer's output on `images` (name -> float): a diagnostic."""
    layers = [layer for layer in model.layers if isinstance(layer, kind)]
    probe = keras.Model(model.inputs, [layer.output for layer in layers])
    outputs = probe(np.asarray(images, np.float32), training=False)
    return {layer.name: float(np.std(np.asarray(out))) for layer, out in zip(layers, outputs)}


# ---------------------------------------------------------------------------------------------
# The PReLU rewrite
# ---------------------------------------------------------------------------------------------
# PReLU(x) = a*x + (1-a)*relu(x) holds for every slope a (x >= 0: a*x + (1-a)*x = x; x < 0: a*x).
# Three ways to write it with ops that XNNPACK runs in int8, cheapest first:
#   "fold":    0 < a <= 1 and the input comes from a BatchNormalization nobody else reads. The BN's
#              gamma and beta are multiplied by a, so it outputs u = a*x, and PReLU = u + relu(c*u)
#              with c = (1-a)/a >= 0 -> MUL with fused RELU, ADD (2 ops).
#   "fast":    a <= 1: (1-a) >= 0 moves inside the relu, a*x + relu((1-a)*x) -> MUL, MUL+RELU, ADD.
#   "general": some a > 1: (1-a)*relu(x) = sign(1-a) * relu(|1-a|*x) -> one more MUL by +-1.
# All three equal PReLU in float up to rounding. Why not simpler forms: LiteRT 2.3's XNNPACK leaves
# int8 PRELU, RELU, MAXIMUM and MINIMUM to the builtin kernels (measured, see README), so neither the
# stock PRELU, nor max(x, a*x) (exact only for 0 <= a <= 1), nor relu(x) - a*relu(-x) (which the
# converter fuses back into PRELU) keep one partition; int8 MUL (with a fused RELU) and ADD are delegated.
FOLD_MIN_SLOPE = 1e-3  # below this c = (1-a)/a explodes and ruins the int8 range of relu(c*u)
# Folding scales channel k of the (per-tensor quantised) activation by a_k, and the int8 MUL constant
# c_k = (1-a_k)/a_k is quantised per tensor too: with slopes {0.01, 0.9}, c = {99, 0.11} and 0.11 rounds to
# 0 or one step of ~0.39. So fold only when the slopes of a layer are within this ratio of each other;
# otherwise the "fast" form, whose constants stay in [0, 1], is used.
FOLD_MAX_SLOPE_RATIO = 4.0
PRELU_FORMS = ("fold", "fast", "general")


class ChannelPReLU(keras.layers.Layer):
    """Per-channel PReLU in one of PRELU_FORMS, carrying the original slopes `alpha`."""

    def __init__(self, alpha_shape, form, **kwargs):
        super().__init__(**kwargs)
        if form not in PRELU_FORMS:
            raise ValueError(f"unknown PReLU form {form!r}; expected one of {PRELU_FORMS}")
        self.alpha_shape = tuple(alpha_shape)
        self.form = form

    def build(self, input_shape):
        self.alpha = self.add_weight(name="alpha", shape=self.alpha_shape, initializer="zeros", trainable=False)

    def call(self, x):
        a = keras.ops.cast(self.alpha, x.dtype)
        relu = keras.ops.relu
        if self.form == "fold":  # x is already a * (the PReLU input), see rewrite_prelu
            return x + relu(((1.0 - a) / a) * x)
        if self.form == "fast":
            return a * x + relu((1.0 - a) * x)
        return a * x + keras.ops.sign(1.0 - a) * relu(keras.ops.abs(1.0 - a) * x)

    def get_config(self):
        return {**super().get_config(), "alpha_shape": self.alpha_shape, "form": self.form}


def _producer(tensor):
    return tensor._keras_history.operation


def _num_consumers(model, layer):
    """How many layer calls in `model` read an output of `layer` (plus 1 if it is a model output)."""
    count = sum(1 for t in model.outputs if _producer(t) is layer)
    for other in model.layers:
        for node in other._inbound_nodes:
            count += sum(1 for t in node.input_tensors if _producer(t) is layer)
    return count


def prelu_form(model, layer) -> str:
    """Which PRELU_FORMS entry is exact for this PReLU layer (see the table above)."""
    alpha = layer.get_weights()[0]
    if np.any(alpha > 1.0):
        return "general"
    bn = _producer(layer.input)
    if (np.all(alpha >= FOLD_MIN_SLOPE) and alpha.max() <= FOLD_MAX_SLOPE_RATIO * alpha.min()
            and isinstance(bn, keras.layers.BatchNormalization) and bn.scale
            and bn.center and bn.axis in (-1, [-1], len(layer.input.shape) - 1, [len(layer.input.shape) - 1])
            and _num_consumers(model, bn) == 1):
        return "fold"
    return "fast"


def rewrite_prelu(model: keras.Model) -> tuple[keras.Model, dict]:
    """Clone `model` with every PReLU replaced by a `ChannelPReLU` carrying the same slopes.

    Returns (clone, summary) with summary[form] = names of the PReLU layers written in that form.
    For "fold" layers the preceding BN's gamma and beta are multiplied by the slopes in the clone.
    """
    summary = {form: [] for form in PRELU_FORMS}
    forms = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.PReLU):
            forms[layer.name] = prelu_form(model, layer)
            summary[forms[layer.name]].append(layer.name)

    def swap(layer):
        if layer.name in forms:
            return ChannelPReLU(layer.get_weights()[0].shape, forms[layer.name], name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    clone = keras.models.clone_model(model, clone_function=swap)
    for new, old in zip(clone.layers, model.layers):
        new.set_weights(old.get_weights())
    for name in summary["fold"]:
        alpha = model.get_layer(name).get_weights()[0].reshape(-1)
        bn = clone.get_layer(_producer(model.get_layer(name).input).name)
        gamma, beta, *stats = bn.get_weights()
        bn.set_weights([gamma * alpha, beta * alpha, *stats])
    return clone, summary


# ---------------------------------------------------------------------------------------------
# int8 activation ranges
# ---------------------------------------------------------------------------------------------
# Each activation tensor of a full-int8 graph has one range (per tensor), 256 levels across it.
# TFLite's converter sets it to the min and max its calibrator logged over the calibration faces
# (README, "int8 that keeps the accuracy", for the measurements on the distilled MobiFace):
#  1. A face network's activations are heavy-tailed (range / std of 12-34 per tensor), so a few
#     extreme values stretch the 256 levels and the bulk of the values gets coarse steps; more
#     calibration faces make it worse (the extremes only grow). This is the main cost.
#  2. The calibrator logs each op's inputs again after the op ran; an ADD or MUL that works in place
#     has by then overwritten its input with its output, so the input's range swallows the output's
#     (43 of 125 tensors wider than anything they held). A small cost: exact min/max
#     ("observed") raise the mean Keras-int8 cosine only from 0.9878 to 0.9891, MSE ranges to 0.9948.
# The fix runs the calibrated float graph on the calibration faces itself, reads every activation,
# and sets each range to the one with the least mean squared quantisation error over those values
# (the "MSE" calibrator of TensorRT and AIMET; Nagel et al. 2021, "A White Paper on Neural Network
# Quantization", sec. 3.5): rare clipped outliers are traded for a finer grid. "observed" (the true
# min/max, no clipping) isolates reason 2.
ACTIVATION_RANGE_METHODS = ("mse", "observed", "calibrator")  # see clip_activation_ranges
CLIP_FRACTIONS = np.linspace(1.0, 0.2, 33)  # candidate ends, as fractions of the observed min / max
CLIP_SAMPLES_PER_TENSOR = 1 << 18  # activation values kept per tensor for the search (random subset)


def quantization_mse(values: np.ndarray, lo: float, hi: float, levels: int = 256) -> float:
    """Mean squared error of `values` after asymmetric uniform quantisation to `levels` steps on [lo, hi].

    As TFLite does it: scale (hi - lo) / (levels - 1), integer zero point, values outside clipped.
    Requires lo <= 0 <= hi and lo < hi.
    """
    scale = (hi - lo) / (levels - 1)
    zero = np.round(-lo / scale)
    q = np.clip(np.round(values / scale) + zero, 0, levels - 1)
    return float(np.mean((values - (q - zero) * scale) ** 2))


def mse_range(values: np.ndarray, lo: float, hi: float, fractions=CLIP_FRACTIONS) -> tuple[float, float]:
    """The clipped range (lo', hi') with lo' = f_lo * lo and hi' = f_hi * hi that minimises
    `quantization_mse(values, lo', hi')`, f from `fractions` (one common f, then coordinate descent).

    Args: values, any shape (float); lo <= 0 <= hi, the observed range (widened to include 0).
    """
    values = np.asarray(values, np.float64).reshape(-1)
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo <= 0 or values.size == 0:
        return lo, hi
    # Both ends together first (a wide range on one side hides the gain of clipping the other), then each.
    f_lo = f_hi = min(fractions, key=lambda f: quantization_mse(values, lo * f, hi * f))
    for _ in range(2):
        if hi > 0:
            f_hi = min(fractions, key=lambda f: quantization_mse(values, lo * f_lo, hi * f))
        if lo < 0:
            f_lo = min(fractions, key=lambda f: quantization_mse(values, lo * f, hi * f_hi))
    return lo * float(f_lo), hi * float(f_hi)


def clip_activation_ranges(calibrated: bytes, images, method: str = "mse", seed: int = 0) -> tuple[bytes, dict]:
    """Set the activation ranges of a calibrated (not yet quantised) TFLite model from its real activations.

    Args:
      calibrated: the converter's output with `_experimental_calibrate_only` (float graph whose
        activation tensors carry the calibrator's min/max).
      images: the calibration faces, [N, H, W, 3] raw RGB 0-255. The float graph is run on them with
        every intermediate tensor kept; each tensor's exact min/max and a random subset of its values
        (at most CLIP_SAMPLES_PER_TENSOR) are recorded.
      method: "mse": `mse_range` searched from the exact min/max; "observed": the exact min/max;
        "calibrator": the calibrator's ranges left as they are (the converter's own result; for tests).
    Returns (model bytes with the new ranges, {"tensors": how many carry a range, "calibrator_wider": how
    many calibrator ranges were wider than every value the tensor held, "range_kept_fraction_median":
    median of new width / calibrator width, "seconds": wall time}). Model inputs keep their range (raw
    0..255 pixels are exact at scale 1). Ops that need equal input and output scales (RESHAPE,
    CONCATENATION, MAX_POOL_2D) are reconciled afterwards by the quantiser.
    Raises ValueError for an unknown method.
    """
    import time

    from tensorflow.lite.tools import flatbuffer_utils

    if method not in ACTIVATION_RANGE_METHODS:
        raise ValueError(f"unknown range method {method!r}; expected one of {ACTIVATION_RANGE_METHODS}")
    start = time.perf_counter()
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    graph = model.subgraphs[0]
    inputs = set(int(i) for i in graph.inputs)
    ranged = [i for i, t in enumerate(graph.tensors) if i not in inputs and t.quantization is not None
              and t.quantization.min is not None and len(t.quantization.min) == 1]
    if method == "calibrator":
        return calibrated, {"tensors": len(ranged), "calibrator_wider": None, "range_kept_fraction_median": 1.0,
                            "seconds": 0.0}
    interp = make_interpreter(calibrated, preserve_all_tensors=True)
    index = interp.get_input_details()[0]["index"]
    images = np.asarray(images, np.float32)
    per_image = max(1, CLIP_SAMPLES_PER_TENSOR // max(1, len(images)))
    rng = np.random.default_rng(seed)
    samples = {i: [] for i in ranged}
    seen = {i: [np.inf, -np.inf] for i in ranged}
    for image in images:
        interp.set_tensor(index, image[None])
        interp.invoke()
        for i in ranged:
            v = interp.get_tensor(i).reshape(-1)
            seen[i] = [min(seen[i][0], float(v.min())), max(seen[i][1], float(v.max()))]
            if method == "mse":
                samples[i].append(v if v.size <= per_image else rng.choice(v, per_image, replace=False))
    kept, wider = [], 0
    for i in ranged:
        q = graph.tensors[i].quantization
        cal_lo, cal_hi = min(float(q.min[0]), 0.0), max(float(q.max[0]), 0.0)
        lo, hi = min(seen[i][0], 0.0), max(seen[i][1], 0.0)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            continue  # leave a tensor that held NaN/Inf to the calibrator (the parity report will show it)
        wider += (cal_hi - cal_lo) > 1.0001 * (hi - lo)
        if method == "mse":
            lo, hi = mse_range(np.concatenate(samples[i]), lo, hi)
        kept.append((hi - lo) / (cal_hi - cal_lo) if cal_hi > cal_lo else 1.0)
        q.min[0], q.max[0] = lo, hi
    out = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    return out, {"tensors": len(ranged), "calibrator_wider": int(wider),
                 "range_kept_fraction_median": float(np.median(kept)) if kept else 1.0,
                 "seconds": round(time.perf_counter() - start, 1)}


def quantize_calibrated(converter, images, int8_io: str = "float", method: str = "mse", stats: dict | None = None
                        ) -> bytes:
    """Full-int8 TFLite from a converter already set up for int8 (optimizations, representative dataset,
    TFLITE_BUILTINS_INT8), with the activation ranges of `clip_activation_ranges(method)`.

    The converter's own two steps, split where tf.lite.experimental.QuantizationDebugger splits them
    (calibrate only, then the MLIR quantiser; private API of the pinned TF). With method="calibrator"
    the result equals `converter.convert()` (tested). `stats`, if a dict, receives the range statistics.
    """
    import warnings

    from tensorflow.lite.python.convert import mlir_quantize

    with warnings.catch_warnings():  # both expected here: inspecting a calibrated float graph is the point
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors.*")
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected.*")
        converter._experimental_calibrate_only = True
        try:
            calibrated = converter.convert()
        finally:
            converter._experimental_calibrate_only = False
        calibrated, range_stats = clip_activation_ranges(calibrated, images, method)
        if stats is not None:
            stats.update(range_stats)
        io_type = tf.int8 if int8_io == "int8" else tf.float32
        return mlir_quantize(calibrated, input_data_type=io_type, output_data_type=io_type)


# ---------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------
def frozen_function(model, batch_size=1):
    """The inference function of `model` with a fixed [batch, H, W, C] input, variables frozen to constants."""
    spec = tf.TensorSpec([batch_size, *model.input_shape[1:]], tf.float32, name="image")
    fn = tf.function(lambda image: model(image, training=False)).get_concrete_function(spec)
    return convert_variables_to_constants_v2(fn)


def to_tflite(model, quantize: str = "none", representative_images=None, int8_io: str = "float",
              activation_ranges: str = "mse", stats: dict | None = None) -> bytes:
    """TFLite flatbuffer of `model` at batch 1.

    Args:
      quantize: "none" (fp32), "float16" (fp16 weights, fp32 compute on CPU), "dynamic" (int8
        weights, dynamic-range activations) or "int8" (full integer, calibrated).
      representative_images: for int8, an array [N, H, W, 3] of raw RGB 0-255 real aligned faces.
      int8_io: for int8, "float" keeps float32 input/output (quantize/dequantize inside the model);
        "int8" makes the model take and return int8 tensors.
      activation_ranges: for int8, "mse" (default) sets each activation range to the one with the
        least quantisation error on the calibration faces, "observed" to their exact min/max (both
        `clip_activation_ranges`); "minmax" is the converter's own calibration.
      stats: if a dict, the range statistics of "mse" are put in it.
    Raises ValueError for an unknown mode, or int8 without representative images.
    """
    if activation_ranges not in ACTIVATION_RANGES:
        raise ValueError(f"unknown activation_ranges {activation_ranges!r}; expected one of {ACTIVATION_RANGES}")
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"unknown quantize mode {quantize!r}; expected one of {QUANTIZE_MODES}")
    if int8_io not in INT8_IO:
        raise ValueError(f"unknown int8_io {int8_io!r}; expected one of {INT8_IO}")
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen_function(model)])
    if quantize == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantize == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quantize == "int8":
        if representative_images is None or len(representative_images) == 0:
            raise ValueError("int8 export needs representative images (pass --calibration=DIR or TFRecord glob)")
        images = np.asarray(representative_images, np.float32)

        def representative():
            for image in images:
                yield [image[None]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io == "int8":
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        if activation_ranges != "minmax":
            return quantize_calibrated(converter, images, int8_io, activation_ranges, stats)
    return converter.convert()


# ---------------------------------------------------------------------------------------------
# Parity
# ---------------------------------------------------------------------------------------------
def cosine(a, b) -> np.ndarray:
    """Row-wise cosine similarity, in float64: random-init embeddings can be ~1e-7 in norm."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-300)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-300)
    return np.sum(a * b, -1)


def parity(model, model_content: bytes, images) -> dict:
    """Cosine similarity between Keras and TFLite embeddings of the same real faces: min and mean."""
    keras_emb = np.asarray(model.predict(np.asarray(images, np.float32), batch_size=32, verbose=0))
    tfl_emb = run_batched(make_interpreter(model_content), np.asarray(images, np.float32))
    cos = cosine(keras_emb, tfl_emb)
    return {"cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()), "num_images": int(len(cos))}


# ---------------------------------------------------------------------------------------------
# The whole export
# ---------------------------------------------------------------------------------------------
def export(model, output, quantize="none", calibration_images=None, parity_images=None, int8_io="float",
           rewrite=None, enforce=True, activation_ranges="mse") -> dict:
    """Convert `model`, write OUTPUT and OUTPUT.parity.json, return the report.

    rewrite: apply `rewrite_prelu` before conversion. None (default) = only for int8. In float modes
    XNNPACK already runs PRELU as one fused op, and the rewrite measured slightly slower there (3 ops
    instead of 1, see README); in int8 it is what keeps the graph in one XNNPACK partition.
    activation_ranges: int8 only, see `to_tflite`.
    Parity is always measured against the original model. Raises ParityError when fp32/fp16 parity
    is below PARITY_MIN (after writing the report, so the numbers can be inspected).
    """
    output = Path(output)
    if quantize not in QUANTIZE_MODES:
        raise ValueError(f"unknown quantize mode {quantize!r}; expected one of {QUANTIZE_MODES}")
    if rewrite is None:
        rewrite = quantize == "int8"
    converted, summary = rewrite_prelu(model) if rewrite else (model, {form: [] for form in PRELU_FORMS})
    range_stats = {}
    content = to_tflite(converted, quantize, calibration_images, int8_io, activation_ranges, range_stats)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(content)
    drop_stale_sidecar(output)  # a threshold measured on the file just replaced must not outlive it
    interp = make_interpreter(content)
    report = {
        "model": model.name,
        "tflite": str(output),
        "quantize": quantize,
        "int8_io": int8_io if quantize == "int8" else "float",
        "size_bytes": len(content),
        "prelu_rewrite": {"enabled": bool(rewrite), **{form: len(summary[form]) for form in PRELU_FORMS},
                          "general_layers": summary["general"]},
        "num_calibration": 0 if quantize != "int8" else int(len(calibration_images)),
        "activation_ranges": ({"method": activation_ranges, **range_stats} if quantize == "int8" else None),
        "ops": op_counts(content),
        **delegation(interp),
    }
    if parity_images is not None and len(parity_images):
        report["parity"] = parity(model, content, parity_images)
        threshold = PARITY_MIN.get(quantize)
        report["parity"]["threshold"] = threshold if threshold is not None else f"reported only (aim mean >= {INT8_PARITY_AIM})"
    else:
        report["parity"] = None
    Path(str(output) + ".parity.json").write_text(json.dumps(report, indent=2))
    if enforce and quantize in PARITY_MIN:
        if report["parity"] is None:
            raise ParityError(f"{quantize} export {str(output)!r} has no parity images; pass --parity_images=DIR")
        if report["parity"]["cosine_min"] < PARITY_MIN[quantize]:
            raise ParityError(f"{quantize} export {str(output)!r}: min cosine {report['parity']['cosine_min']:.6f} "
                              f"< {PARITY_MIN[quantize]} (Keras vs TFLite); see {output}.parity.json")
    return report
