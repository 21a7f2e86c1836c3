"""Keras -> TFLite flatbuffer at batch 1: fp32, fp16, dynamic-range and full int8 (frozen graph, see the
package docstring for why freezing and batch 1)."""
from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from mobiface_tf.export.ranges import quantize_calibrated

QUANTIZE_MODES = ("none", "float16", "dynamic", "int8")  # the TFLite modes to_tflite implements
INT8_IO = ("float", "int8")
# How int8 activation ranges are set from the calibration faces: "mse" and "observed" as in
# `clip_activation_ranges`, "minmax" the converter's own calibration.
ACTIVATION_RANGES = ("mse", "observed", "minmax")


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
