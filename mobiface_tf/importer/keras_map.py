"""Match a SourceGraph to the project's Keras network layer by layer and copy the weights, or refuse.

The Keras side is read the same way as the source: every Conv2D / DepthwiseConv2D in build order, with its
padding (SAME, or a ZeroPadding2D before a VALID conv), its input size, the BatchNormalization after it and
the activation after that; residual Add layers in between. The two sequences must agree item by item
(kind, kernel, channels, stride, padding, input size, activation, and the place of every residual add);
the first difference is refused with one line naming both sides.

Weights: conv kernels as they are (already in Keras layout); a dense source layer becomes the 1x1 linear
conv of the GDC head. The Keras BN after each conv takes the source's affine exactly:
  - folded BN (a bias b only):            gamma 1, beta b, moving mean 0, moving variance 1 - eps
  - separate BN (g, be, m, v, e), bias c: gamma g, beta be, moving mean m - c, moving variance v + e - eps
where eps is the Keras layer's epsilon, so (x - mean) / sqrt(var + eps) * gamma + beta is the source's
affine in inference mode.
"""
from __future__ import annotations

import numpy as np

from mobiface_tf.importer.graph import ADD, ImportRefused, Layer, same_pads


def _padding_of(layer, in_hw):
    kh, kw = layer.kernel_size
    sh, sw = layer.strides
    if layer.padding == "same":
        return (*same_pads(in_hw[0], kh, sh), *same_pads(in_hw[1], kw, sw))
    return (0, 0, 0, 0)


def keras_items(model) -> list:
    """The Keras network as [(Layer-like signature record, conv layer, bn layer, act layer) | ADD] in build order.

    Each record is a graph.Layer with only shapes filled in (kernel zeros), so the source and the Keras
    network are described and compared by the same code.
    """
    from keras import layers as L

    out, pending_pad = [], None
    seq = list(model.layers)
    for i, layer in enumerate(seq):
        if isinstance(layer, L.ZeroPadding2D):
            (t, b), (lft, rgt) = layer.padding
            pending_pad = ((t, b, lft, rgt), layer.input.shape[1:3])
            continue
        if isinstance(layer, L.Add):
            out.append(ADD)
            continue
        if not isinstance(layer, (L.Conv2D, L.DepthwiseConv2D)):
            continue
        dw = isinstance(layer, L.DepthwiseConv2D)
        if pending_pad and layer.padding == "valid":
            pads, in_hw = pending_pad
        else:
            in_hw = tuple(layer.input.shape[1:3])
            pads = _padding_of(layer, in_hw)
        pending_pad = None
        bn = act = None
        for nxt in seq[i + 1:]:
            if isinstance(nxt, (L.Flatten, L.Reshape)):
                continue
            if bn is None and isinstance(nxt, L.BatchNormalization):
                bn = nxt
                continue
            if bn is not None and isinstance(nxt, (L.PReLU, L.ReLU)):
                act = nxt
            break
        kshape = tuple(layer.kernel.shape)
        rec = Layer("dw" if dw else "conv", layer.name, np.zeros(kshape, np.float32), tuple(layer.strides),
                    tuple(int(p) for p in pads), tuple(int(d) for d in in_hw),
                    act=None if act is None else ("prelu" if isinstance(act, L.PReLU) else "relu"))
        out.append((rec, layer, bn, act))
    return out


def _describe(item) -> str:
    return "residual add" if item is ADD else item.describe()


def match(source, model) -> list:
    """Pair source items with Keras items; ImportRefused naming the first difference (one line)."""
    theirs = keras_items(model)
    pairs = []
    for n in range(max(len(source.items), len(theirs))):
        s = source.items[n] if n < len(source.items) else None
        k = theirs[n] if n < len(theirs) else None
        kname = "" if k is None or k is ADD else f" {k[1].name}"
        krec = None if k is None else (ADD if k is ADD else k[0])
        if s is None:
            raise ImportRefused(f"source ends after {n} items; Keras layer {n}{kname} ({_describe(krec)}) has no "
                                f"source counterpart")
        sname = "residual add" if s is ADD else s.name
        if k is None:
            raise ImportRefused(f"source item {n} {sname!r} ({_describe(s)}) is past the end of the Keras network")
        if (s is ADD) != (k is ADD) or (s is not ADD and s.signature() != k[0].signature()):
            raise ImportRefused(f"first difference at item {n}: source {sname!r} is {_describe(s)}; "
                                f"Keras{kname} is {_describe(krec)}")
        pairs.append((s, k))
    return pairs


def _bn_weights(s: Layer, bn) -> list:
    c = s.channels[1]
    eps = float(bn.epsilon)
    bias = np.zeros(c, np.float32) if s.bias is None else np.asarray(s.bias, np.float32).reshape(-1)
    if s.bn is None:
        gamma, beta, mean, var = np.ones(c), bias, np.zeros(c), np.full(c, 1.0 - eps)
    else:
        g, be, m, v, e = (np.asarray(a, np.float64) for a in s.bn)
        gamma, beta, mean, var = g, be, m - bias, v + e - eps
    names = [w.path.split("/")[-1] for w in bn.weights]
    by_name = {"gamma": gamma, "beta": beta, "moving_mean": mean, "moving_variance": var}
    return [np.asarray(by_name[n], np.float32).reshape(c) for n in names]


def assign(pairs, stem_matrix=None) -> None:
    """Copy each source layer's kernel, affine and PReLU slopes into its Keras layers.

    stem_matrix [3, 3] (importer.input_matrix): source input = stem_matrix @ Keras normalised input, per
    pixel. It is folded into the first conv's input channels, which absorbs a source convention that
    differs from the Keras one by a scale or a channel order (BGR) exactly. None: identity.
    """
    first = True
    for s, k in pairs:
        if s is ADD:
            continue
        _, conv, bn, act = k
        kernel = np.asarray(s.kernel, np.float32)
        if s.kind == "dense":
            kernel = kernel.reshape(1, 1, *kernel.shape)
        if first and stem_matrix is not None:
            if kernel.shape[2] != 3:
                raise ImportRefused(f"the first source layer {s.name!r} takes {kernel.shape[2]} channels, not RGB")
            kernel = np.einsum("hwco,cj->hwjo", kernel.astype(np.float64), np.asarray(stem_matrix, np.float64))
        first = False
        conv.kernel.assign(kernel.reshape(conv.kernel.shape))
        if bn is None:
            raise ImportRefused(f"Keras layer {conv.name} has no BatchNormalization to hold the source's bias")
        bn.set_weights(_bn_weights(s, bn))
        if s.act == "prelu":
            alpha = act.weights[0]
            alpha.assign(np.broadcast_to(np.asarray(s.slopes, np.float32).reshape(-1), (s.channels[1],))
                         .reshape(alpha.shape))
