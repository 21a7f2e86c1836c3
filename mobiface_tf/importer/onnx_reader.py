"""Read an ONNX face network (NCHW, e.g. InsightFace's MobileFaceNet exported from MXNet) into a SourceGraph.

Parsed with the `onnx` package (nodes in their topological order, initializers and Constant nodes as the
weights). Understood, besides Conv (group 1 or depthwise) / Gemm / MatMul layers:

- input normalisation: Sub / Add / Mul / Div by constants before the first layer;
- Pad (constant 0) or Conv `pads` / `auto_pad`; separate BatchNormalization after a layer (kept unfolded:
  keras_map turns it into the Keras BN's statistics); PRelu and Relu;
- residual Add of two earlier tensors; Flatten / Reshape / Identity / Dropout / Squeeze between layers.

Anything else is refused (ImportRefused) with the node's index, type and name.
"""
from __future__ import annotations

import numpy as np

from mobiface_tf.importer.graph import (ADD, ImportRefused, Layer, SourceGraph, compose_normalisation, conv_out,
                                       same_pads)

PASS_THROUGH = ("Flatten", "Reshape", "Identity", "Dropout", "Squeeze")


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class _State:
    def __init__(self, model):
        from onnx import numpy_helper

        self.consts = {t.name: numpy_helper.to_array(t).astype(np.float32) if t.data_type in (1, 10, 11)
                       else numpy_helper.to_array(t) for t in model.graph.initializer}
        self.alias = {}  # tensor -> ("input",) | ("pad", pads, src) | ("layer", Layer) | ("sum",)
        self.hw = {}

    def refuse(self, i, node, why="has no counterpart in the project's MobileFaceNet"):
        raise ImportRefused(f"source node {i} {node.op_type} {node.name or node.output[0]!r} {why}")


def _conv(st: _State, i, node) -> Layer:
    a = _attrs(node)
    x = node.input[0]
    w = st.consts.get(node.input[1])
    if w is None or w.ndim != 4:
        st.refuse(i, node, "has no constant 4-D weight")
    pads, src = (0, 0, 0, 0), x
    if st.alias.get(x, ("",))[0] == "pad":
        _, pads, src = st.alias[x]
    in_hw = st.hw[src]
    kh, kw = w.shape[2:]
    stride = tuple(int(s) for s in a.get("strides", (1, 1)))
    if any(d != 1 for d in a.get("dilations", (1, 1))):
        st.refuse(i, node, "is dilated")
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        (t, b), (lf, rt) = (same_pads(n, k, s) for n, k, s in zip(in_hw, (kh, kw), stride))
        own = (t, b, lf, rt) if auto == "SAME_UPPER" else (b, t, rt, lf)
    else:
        p = [int(v) for v in a.get("pads", (0, 0, 0, 0))]
        own = (p[0], p[2], p[1], p[3])
    pads = tuple(int(u + v) for u, v in zip(pads, own))
    group = int(a.get("group", 1))
    c_in = w.shape[1] * group
    if group == 1:
        kind, kernel = "conv", w.transpose(2, 3, 1, 0)               # [O, I, kh, kw] -> [kh, kw, I, O]
    elif group == c_in == w.shape[0] and w.shape[1] == 1:
        kind, kernel = "dw", w.transpose(2, 3, 0, 1)                 # [C, 1, kh, kw] -> [kh, kw, C, 1]
    else:
        st.refuse(i, node, f"is a grouped conv (group {group}, weight {list(w.shape)}); only plain or depthwise import")
    bias = st.consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    out_hw = (conv_out(in_hw[0], kh, stride[0], pads[0], pads[1]), conv_out(in_hw[1], kw, stride[1], pads[2], pads[3]))
    st.hw[node.output[0]] = out_hw
    return Layer(kind, node.input[1], np.ascontiguousarray(kernel), stride, pads, tuple(in_hw), bias=bias)


def _dense(st: _State, i, node) -> Layer:
    a = _attrs(node)
    w = st.consts.get(node.input[1])
    if w is None or w.ndim != 2:
        st.refuse(i, node, "has no constant 2-D weight")
    if node.op_type == "Gemm":
        if a.get("transA", 0) or float(a.get("alpha", 1.0)) != 1.0 or float(a.get("beta", 1.0)) != 1.0:
            st.refuse(i, node, "uses transA/alpha/beta, which the importer does not read")
        w = w.T if a.get("transB", 0) else w
    bias = st.consts.get(node.input[2]) if node.op_type == "Gemm" and len(node.input) > 2 else None
    st.hw[node.output[0]] = (1, 1)
    return Layer("dense", node.input[1], np.ascontiguousarray(w), bias=None if bias is None else bias.reshape(-1))


def read_onnx(path) -> SourceGraph:
    """Parse an NCHW .onnx face network into a SourceGraph (see the module docstring for what is understood).

    Raises ImportRefused (one line) for a node or pattern that has no place in MobileFaceNet, and ValueError
    for a file that is not a readable ONNX model.
    """
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError and friends
        raise ValueError(f"{str(path)!r} is not a readable ONNX model ({type(e).__name__})") from None
    st = _State(model)
    inputs = [v for v in model.graph.input if v.name not in st.consts]
    if len(inputs) != 1:
        raise ImportRefused(f"{path}: {len(inputs)} graph inputs; expected one image input")
    dims = [d.dim_value if d.dim_value > 0 else None for d in inputs[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1] != 3 or None in dims[2:]:
        raise ImportRefused(f"{path}: input shape {dims}; expected [N, 3, H, W] (NCHW) with a fixed H, W")
    g = SourceGraph(str(path), "onnx", (dims[2], dims[3]))
    st.alias[inputs[0].name] = ("input",)
    st.hw[inputs[0].name] = g.input_hw
    for i, node in enumerate(model.graph.node):
        op, ins, out = node.op_type, list(node.input), node.output[0]
        if op == "Constant":
            st.consts[out] = numpy_helper.to_array(_attrs(node)["value"]).astype(np.float32)
            continue
        kinds = ["const" if t in st.consts else st.alias.get(t, (None,))[0] for t in ins]
        if op in ("Sub", "Add", "Mul", "Div") and not g.items and "input" in kinds and "const" in kinds:
            c = st.consts[ins[kinds.index("const")]]
            if c.size != 1 and (c.size != 3 or c.ndim < 3 or c.shape[-2:] != (1, 1)):
                st.refuse(i, node, f"normalises with a constant of shape {list(c.shape)}, not per channel")
            if not compose_normalisation(g, op.upper(), c, kinds[0] == "input"):
                st.refuse(i, node, "normalises the input in a way the importer does not read")
            st.alias[out], st.hw[out] = ("input",), g.input_hw
        elif op == "Pad":
            a = _attrs(node)
            p = st.consts.get(ins[1]) if len(ins) > 1 and ins[1] else np.asarray(a.get("pads", ()))
            value = st.consts.get(ins[2]) if len(ins) > 2 and ins[2] else np.float32(a.get("value", 0.0))
            mode = a.get("mode", b"constant")
            if p is None or (mode.decode() if isinstance(mode, bytes) else mode) != "constant" or float(value) != 0.0:
                st.refuse(i, node, "is not a constant zero padding")
            p = [int(v) for v in np.asarray(p).reshape(-1)]
            if len(p) != 8 or any(p[j] for j in (0, 1, 4, 5)):
                st.refuse(i, node, f"pads {p}: not only the spatial axes of NCHW")
            st.alias[out] = ("pad", (p[2], p[6], p[3], p[7]), ins[0])
        elif op == "Conv":
            layer = _conv(st, i, node)
            g.items.append(layer)
            st.alias[out] = ("layer", layer)
        elif op in ("Gemm", "MatMul"):
            layer = _dense(st, i, node)
            g.items.append(layer)
            st.alias[out] = ("layer", layer)
        elif op == "BatchNormalization" and kinds[0] == "layer":
            layer = st.alias[ins[0]][1]
            if layer.bn is not None or layer.act is not None:
                st.refuse(i, node, "follows an activation or another BatchNormalization")
            eps = float(_attrs(node).get("epsilon", 1e-5))
            layer.bn = tuple(st.consts[t].reshape(-1) for t in ins[1:5]) + (eps,)
            st.alias[out] = ("layer", layer)
        elif op in ("PRelu", "Relu") and kinds[0] == "layer" and st.alias[ins[0]][1].act is None:
            layer = st.alias[ins[0]][1]
            layer.act = op.lower()
            if op == "PRelu":
                layer.slopes = st.consts[ins[1]].reshape(-1)
            st.alias[out] = ("layer", layer)
        elif op == "Add" and len(ins) == 2 and all(k in ("layer", "sum") for k in kinds):
            g.items.append(ADD)
            st.alias[out], st.hw[out] = ("sum",), st.hw.get(ins[0])
        elif op in PASS_THROUGH and kinds[0] in ("layer", "sum"):
            st.alias[out], st.hw[out] = st.alias[ins[0]], st.hw.get(ins[0])
        else:
            st.refuse(i, node)
        if out not in st.hw and ins and ins[0] in st.hw:
            st.hw[out] = st.hw[ins[0]]
    if not g.layers:
        raise ImportRefused(f"{path}: no convolution or fully-connected layer found")
    return g
