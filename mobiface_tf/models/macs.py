"""Multiply-accumulate count of the conv, depthwise and dense layers (the convention of the
MobileNet papers' "MAdds"; BN, activations and adds are not counted)."""
import math

from keras import layers


def layer_macs(layer) -> int:
    """MACs of one layer for a single input image (0 for layers that do no conv/dense work)."""
    if isinstance(layer, layers.DepthwiseConv2D):
        _, h, w, c = layer.output.shape
        kh, kw = layer.kernel_size
        return h * w * c * kh * kw  # one kh*kw filter per output channel
    if isinstance(layer, layers.Conv2D):
        _, h, w, c_out = layer.output.shape
        kh, kw = layer.kernel_size
        c_in = layer.input.shape[-1]
        return h * w * c_out * kh * kw * c_in // layer.groups
    if isinstance(layer, layers.Dense):
        return math.prod(layer.output.shape[1:-1]) * layer.input.shape[-1] * layer.units
    return 0


def count_macs(model) -> int:
    """Total MACs of a functional model for one image."""
    return sum(layer_macs(layer) for layer in model.layers)
