"""The PReLU rewrite that lets XNNPACK run int8 PReLU networks in one partition (see the package docstring)."""
from __future__ import annotations

import keras
import numpy as np

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
