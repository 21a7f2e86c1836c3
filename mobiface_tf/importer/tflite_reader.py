"""Read a float TFLite face network (e.g. InsightFace's MobileFaceNet converted from MXNet) into a SourceGraph.

The flatbuffer is parsed with TensorFlow's own schema bindings (tensorflow.lite.tools.flatbuffer_utils): the
ops with their options (stride, padding, fused activation) and the constant buffers, nothing run. Patterns
understood, besides CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED with their folded-BN biases:

- input normalisation: SUB / ADD / MUL / DIV by constants before the first layer (the reference: -127.5, *1/128);
- explicit PAD before a VALID conv (MXNet's symmetric padding);
- PReLU written out as MAXIMUM(0, x) + slope * MINIMUM(0, x), or the PRELU op; RELU ops or fused RELU;
- residual ADD of two earlier tensors; RESHAPE / SQUEEZE between the GDC and the final FULLY_CONNECTED.

Anything else is refused (ImportRefused) with the op's index, name and output tensor.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mobiface_tf.importer.graph import ADD, ImportRefused, Layer, SourceGraph, compose_normalisation, same_pads

_NUMPY = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 9: np.int8, 7: np.int16, 10: np.float64}


def _op_names():
    from tensorflow.lite.python import schema_py_generated as schema

    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


class _Reader:
    def __init__(self, path):
        from tensorflow.lite.tools import flatbuffer_utils

        self.model = flatbuffer_utils.read_model(str(path))
        if len(self.model.subgraphs) != 1:
            raise ImportRefused(f"{path}: {len(self.model.subgraphs)} subgraphs; expected one face network")
        self.sg = self.model.subgraphs[0]
        self.names = _op_names()
        self.alias = {}  # tensor -> ("input",) | ("layer", Layer) | ("pad", pads, src) | ("max"/"min", Layer)
        #                           | ("neg", Layer, slopes) | ("sum",)
        self.folded = {}  # tensor -> float32 array: DEQUANTIZE outputs of constant float16 weights

    def tname(self, t) -> str:
        name = self.sg.tensors[t].name
        return name.decode() if isinstance(name, bytes) else str(name)

    def const(self, t):
        """The constant array of tensor t, or None when t is computed at run time."""
        if t < 0:
            return None
        if t in self.folded:
            return self.folded[t]
        tensor = self.sg.tensors[t]
        data = self.model.buffers[tensor.buffer].data
        if data is None or len(data) == 0:
            return None
        if tensor.type not in _NUMPY:
            raise ImportRefused(f"tensor {self.tname(t)!r} has TFLite type {tensor.type}; only float models import")
        arr = np.frombuffer(bytes(np.asarray(data, np.uint8)), _NUMPY[tensor.type])
        shape = [] if tensor.shape is None else [int(d) for d in tensor.shape]
        return arr.reshape(shape).astype(np.float32) if tensor.type in (0, 1, 10) else arr.reshape(shape)

    def hw(self, t) -> tuple:
        shape = self.sg.tensors[t].shape
        return int(shape[1]), int(shape[2])

    def refuse(self, i, op_name, op, why="has no counterpart in the project's MobileFaceNet"):
        out = self.tname(op.outputs[0]) if len(op.outputs) else "?"
        raise ImportRefused(f"source op {i} {op_name} (output {out!r}) {why}")


def _layer(r: _Reader, name, op, opts) -> Layer:
    x, w_t = op.inputs[0], op.inputs[1]
    pads, src = (0, 0, 0, 0), x
    if r.alias.get(x, ("",))[0] == "pad":
        _, pads, src = r.alias[x]
    in_hw = r.hw(src) if name != "FULLY_CONNECTED" else (1, 1)
    w = r.const(w_t)
    if w is None:
        raise ImportRefused(f"{name} {r.tname(op.outputs[0])!r} has a computed (non-constant) weight tensor")
    bias = r.const(op.inputs[2]) if len(op.inputs) > 2 else None
    act = {0: None, 1: "relu"}.get(getattr(opts, "fusedActivationFunction", 0), "unsupported")
    if act == "unsupported":
        raise ImportRefused(f"{name} {r.tname(op.outputs[0])!r} has fused activation "
                            f"{opts.fusedActivationFunction}; only none or RELU import")
    if name == "FULLY_CONNECTED":
        return Layer("dense", r.tname(w_t), w.T.copy(), bias=bias, act=act)
    if getattr(opts, "dilationHFactor", 1) != 1 or getattr(opts, "dilationWFactor", 1) != 1:
        raise ImportRefused(f"{name} {r.tname(w_t)!r} is dilated; MobileFaceNet has no dilated convs")
    stride = (int(opts.strideH), int(opts.strideW))
    if name == "DEPTHWISE_CONV_2D":
        c_in = int(r.sg.tensors[src].shape[3])
        if w.shape[3] != c_in:
            raise ImportRefused(f"{name} {r.tname(w_t)!r} has {w.shape[3]} filters on {c_in} channels (depth "
                                "multiplier != 1); only 1 imports")
        kind, kernel = "dw", w[0][..., None]              # [1, kh, kw, C] -> [kh, kw, C, 1]
    else:
        kind, kernel = "conv", w.transpose(1, 2, 3, 0)  # [O, kh, kw, I] -> [kh, kw, I, O]
    if opts.padding == 0:  # SAME, on top of any explicit PAD
        (t, b), (lft, rgt) = (same_pads(n + p0 + p1, k, s) for n, k, s, p0, p1 in
                              zip(in_hw, kernel.shape[:2], stride, pads[0::2], pads[1::2]))
        pads = (pads[0] + t, pads[1] + b, pads[2] + lft, pads[3] + rgt)
    return Layer(kind, r.tname(w_t), np.ascontiguousarray(kernel), stride, tuple(int(p) for p in pads), in_hw,
                 bias=bias, act=act)


def read_tflite(path) -> SourceGraph:
    """Parse a float .tflite face network into a SourceGraph (see the module docstring for what is understood).

    Raises ImportRefused (one line) for an op or pattern that has no place in MobileFaceNet, and ValueError
    for a file that is not a TFLite flatbuffer.
    """
    try:
        r = _Reader(path)
    except ImportRefused:
        raise
    except Exception as e:  # the flatbuffer bindings raise assorted errors on a non-TFLite file
        raise ValueError(f"{path}: not a readable TFLite model ({type(e).__name__})") from None
    if len(r.sg.inputs) != 1:
        raise ImportRefused(f"{path}: {len(r.sg.inputs)} inputs; expected one image input")
    inp = int(r.sg.inputs[0])
    shape = [int(d) for d in r.sg.tensors[inp].shape]
    if len(shape) != 4 or shape[3] != 3:
        raise ImportRefused(f"{path}: input shape {shape}; expected [1, H, W, 3] (NHWC RGB)")
    g = SourceGraph(str(path), "tflite", (shape[1], shape[2]))
    r.alias[inp] = ("input",)
    for i, op in enumerate(r.sg.operators):
        code = r.model.operatorCodes[op.opcodeIndex]
        name = r.names.get(max(code.builtinCode, code.deprecatedBuiltinCode), str(code.builtinCode))
        ins = [int(t) for t in op.inputs]
        out = int(op.outputs[0])
        consts = [r.const(t) for t in ins]
        kinds = [r.alias.get(t, (None,))[0] if c is None else "const" for t, c in zip(ins, consts)]
        if name == "DEQUANTIZE" and kinds == ["const"] and r.sg.tensors[ins[0]].type == 1:  # float16 weights
            r.folded[out] = consts[0]
            continue
        if name in ("QUANTIZE", "DEQUANTIZE"):
            r.refuse(i, name, op, "quantises activations: this is an integer-quantised model. Import the float "
                     ".tflite (or .onnx) instead and quantise the result with tools/to_tflite.py")
        if name in ("SUB", "ADD", "MUL", "DIV") and not g.items and "input" in kinds and "const" in kinds:
            if compose_normalisation(g, name, consts[kinds.index("const")], kinds[0] == "input"):
                r.alias[out] = ("input",)
                continue
            r.refuse(i, name, op, "normalises the input in a way the importer does not read")
        if name in ("PAD", "PADV2"):
            p = consts[1]
            if p is None or (name == "PADV2" and float(np.asarray(consts[2]).reshape(-1)[0]) != 0.0):
                r.refuse(i, name, op, "is not a constant zero padding")
            if np.any(p[0] != 0) or np.any(p[3] != 0):
                r.refuse(i, name, op, "pads the batch or channel axis")
            r.alias[out] = ("pad", (int(p[1][0]), int(p[1][1]), int(p[2][0]), int(p[2][1])), ins[0])
        elif name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            layer = _layer(r, name, op, op.builtinOptions)
            g.items.append(layer)
            r.alias[out] = ("layer", layer)
        elif name in ("MAXIMUM", "MINIMUM") and "const" in kinds and "layer" in kinds:
            c = consts[kinds.index("const")]
            if np.any(c != 0):
                r.refuse(i, name, op, f"compares with {float(np.max(np.abs(c)))}, not 0: not a PReLU")
            r.alias[out] = ("max" if name == "MAXIMUM" else "min", r.alias[ins[kinds.index("layer")]][1])
        elif name == "MUL" and "const" in kinds and "min" in kinds:
            r.alias[out] = ("neg", r.alias[ins[kinds.index("min")]][1], consts[kinds.index("const")].reshape(-1))
        elif name == "ADD" and sorted(kinds) == ["max", "neg"]:
            (_, la), (_, lb, slopes) = sorted((r.alias[t] for t in ins), key=lambda a: a[0])
            if la is not lb or la.act is not None:
                r.refuse(i, name, op, "mixes two layers: not a PReLU")
            la.act, la.slopes = "prelu", slopes
            r.alias[out] = ("layer", la)
        elif name == "PRELU" and kinds[0] == "layer" and consts[1] is not None:
            layer = r.alias[ins[0]][1]
            layer.act, layer.slopes = "prelu", consts[1].reshape(-1)
            r.alias[out] = ("layer", layer)
        elif name == "RELU" and kinds[0] == "layer" and r.alias[ins[0]][1].act is None:
            r.alias[ins[0]][1].act = "relu"
            r.alias[out] = r.alias[ins[0]]
        elif name == "ADD" and all(k in ("layer", "sum") for k in kinds) and len(ins) == 2:
            g.items.append(ADD)
            r.alias[out] = ("sum",)
        elif name in ("RESHAPE", "SQUEEZE") and kinds[0] in ("layer", "sum"):
            r.alias[out] = r.alias[ins[0]]
        else:
            r.refuse(i, name, op)
    if not g.layers:
        raise ImportRefused(f"{path}: no convolution or fully-connected layer found")
    return g


def is_tflite(path) -> bool:
    """True when the file carries the TFLite flatbuffer identifier 'TFL3'."""
    with open(Path(path), "rb") as f:
        head = f.read(8)
    return head[4:8] == b"TFL3"
