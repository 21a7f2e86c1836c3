"""Keras -> TFLite export: conversion (fp32, fp16, dynamic-range, full int8), the PReLU rewrite that lets
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

Modules:
  faces.py      real aligned faces for int8 calibration and parity (image folders, TFRecord shards)
  batchnorm.py  BatchNorm statistics of a random-init network (benchmarking only)
  prelu.py      the PReLU rewrite (`rewrite_prelu`, `ChannelPReLU`)
  ranges.py     int8 activation ranges with the least quantisation error (`clip_activation_ranges`)
  convert.py    Keras -> TFLite flatbuffer (`to_tflite`, QUANTIZE_MODES, `frozen_function`)
  parity.py     Keras-vs-TFLite cosine parity and its thresholds (`parity`, PARITY_MIN, ParityError)
  pipeline.py   the whole export: rewrite, convert, write the .tflite and its .parity.json report (`export`)
"""
