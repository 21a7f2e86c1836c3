"""The importer's neutral description of a face network: an ordered list of layers and residual adds.

A reader (tflite_reader, onnx_reader) turns a published graph into a `SourceGraph`; keras_map matches it,
layer by layer, against the project's Keras network. Every array is already in Keras layout (NHWC):

    conv   kernel [kh, kw, c_in, c_out]
    dw     kernel [kh, kw, c, 1]         (depthwise, one filter per channel)
    dense  kernel [c_in, c_out]          (matched to a 1x1 conv on a 1x1 map)

A layer's affine after the conv is its `bias` (BN folded into the conv, as TFLite exports) and/or a separate
`bn` (gamma, beta, mean, var, eps), as an unfolded ONNX export has; `act` is None (linear), "relu" or
"prelu" with `slopes` [c].
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class ImportRefused(ValueError):
    """The source graph does not fit the project's network; the message is one line naming the first
    layer that differs. Nothing is written."""


@dataclass
class Layer:
    kind: str                      # "conv" | "dw" | "dense"
    name: str                      # the source's own name of the layer (its weight tensor or node)
    kernel: np.ndarray
    stride: tuple = (1, 1)
    pads: tuple = (0, 0, 0, 0)     # top, bottom, left, right, in pixels
    in_hw: tuple = (1, 1)          # spatial size of the layer's input, before padding
    bias: np.ndarray | None = None
    bn: tuple | None = None        # (gamma, beta, mean, var, eps) of a BatchNorm right after the layer
    act: str | None = None         # None | "relu" | "prelu"
    slopes: np.ndarray | None = None

    @property
    def channels(self) -> tuple:
        """(c_in, c_out)."""
        k = self.kernel
        if self.kind == "dense":
            return int(k.shape[0]), int(k.shape[1])
        if self.kind == "dw":
            return int(k.shape[2]), int(k.shape[2])
        return int(k.shape[2]), int(k.shape[3])

    def signature(self) -> tuple:
        """What must agree with the Keras layer: kind (a dense counts as a 1x1 conv on a 1x1 map), kernel
        size, channels, stride, padding, input size and activation."""
        if self.kind == "dense":
            return ("conv", (1, 1), self.channels, (1, 1), (0, 0, 0, 0), (1, 1), self.act)
        return (self.kind, tuple(int(d) for d in self.kernel.shape[:2]), self.channels, tuple(self.stride),
                tuple(self.pads), tuple(self.in_hw), self.act)

    def describe(self) -> str:
        """One phrase, e.g. 'dw 3x3 128->128 stride 2 pads (1,1,1,1) on 56x56, prelu'."""
        kind, k, (ci, co), s, p, hw, act = self.signature()
        return (f"{kind} {k[0]}x{k[1]} {ci}->{co} stride {s[0]} pads ({','.join(map(str, p))}) on {hw[0]}x{hw[1]}, "
                f"{act or 'linear'}")


ADD = "add"  # a residual addition between two earlier tensors


@dataclass
class SourceGraph:
    """A published network read into `items` (Layer or ADD, in execution order) plus its input convention."""
    path: str
    fmt: str                                 # "tflite" | "onnx"
    input_hw: tuple                          # (H, W)
    items: list = field(default_factory=list)
    # The source's in-graph input normalisation, x -> x * scale + offset (per channel, length 3), applied to
    # what the source is fed; identity when the graph has none.
    scale: np.ndarray = field(default_factory=lambda: np.ones(3, np.float32))
    offset: np.ndarray = field(default_factory=lambda: np.zeros(3, np.float32))

    @property
    def layers(self) -> list:
        return [i for i in self.items if isinstance(i, Layer)]


def same_pads(in_size: int, kernel: int, stride: int) -> tuple:
    """TensorFlow SAME padding (before, after) of one spatial axis."""
    out = -(-in_size // stride)
    total = max((out - 1) * stride + kernel - in_size, 0)
    return total // 2, total - total // 2


def conv_out(in_size: int, kernel: int, stride: int, before: int, after: int) -> int:
    """Output size of a VALID conv over an input padded by (before, after)."""
    return (in_size + before + after - kernel) // stride + 1


def _channel_vector(c, what):
    c = np.asarray(c, np.float32).reshape(-1)
    if c.size not in (1, 3):
        raise ImportRefused(f"input normalisation {what} has {c.size} values; expected 1 or 3")
    return np.broadcast_to(c, (3,)).astype(np.float32)


def compose_normalisation(g: SourceGraph, name, consts, x_first) -> bool:
    """Compose one SUB/ADD/MUL/DIV (`name`, upper case) by the constant `consts` (1 or 3 values) into g.scale /
    g.offset (y = x * scale + offset); x_first: the image is the op's first operand. False for an op that
    does not compose (constant / x); ImportRefused for a constant that is not per channel."""
    c = _channel_vector(consts, name)
    if name == "SUB" and x_first:
        g.offset = g.offset - c
    elif name == "SUB":
        g.scale, g.offset = -g.scale, c - g.offset
    elif name == "ADD":
        g.offset = g.offset + c
    elif name == "MUL":
        g.scale, g.offset = g.scale * c, g.offset * c
    elif name == "DIV" and x_first:
        g.scale, g.offset = g.scale / c, g.offset / c
    else:
        return False
    return True
