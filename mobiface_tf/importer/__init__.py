"""Import a published MobileFaceNet (.tflite or .onnx) into the project's Keras network, exactly or not at all.

    model, report = import_model("mobilefacenet_insightface_fp32.tflite")   # keras.Model, raw RGB 0-255 in
    model.save("mobilefacenet_imported.keras")

Steps: read the source graph (tflite_reader / onnx_reader), build the Keras MobileFaceNet at the source's
input size, embedding size and padding ("symmetric" when the source pads strided layers by 1 pixel on every
side, as MXNet does), match the two layer by layer (keras_map.match: the first difference is refused with
one line), copy the weights, absorb the source's input convention into the stem conv, and check the result
against the source itself on `check_images` (cosine of every image's embedding >= min_cosine), or refuse.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from mobiface_tf.importer.graph import ADD, ImportRefused, SourceGraph

BACKBONES = ("mobilefacenet",)
MIN_COSINE = 0.9999
KERAS_MEAN, KERAS_SCALE = 127.5, 1.0 / 128.0  # the project's in-graph normalisation (models.layers.normalize)


def read_source(path) -> SourceGraph:
    """A .tflite or .onnx file -> SourceGraph. ValueError for a missing file or another format."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--source={str(path)!r} does not exist; pass a .tflite or .onnx MobileFaceNet")
    from mobiface_tf.importer.tflite_reader import is_tflite, read_tflite

    if is_tflite(path):
        return read_tflite(path)
    if path.suffix.lower() == ".onnx":
        from mobiface_tf.importer.onnx_reader import read_onnx

        return read_onnx(path)
    raise ValueError(f"--source={str(path)!r} is neither a TFLite flatbuffer nor an .onnx file")


def input_matrix(graph: SourceGraph, preprocess: str) -> np.ndarray:
    """The 3x3 matrix M with source_normalised_input = M @ keras_normalised_input for every RGB pixel.

    The source is fed PREPROCESS[preprocess](x) and normalises it in-graph (graph.scale, graph.offset);
    the Keras network computes u = (x - 127.5) / 128. The whole source convention must be linear in u
    (no constant left at mid-grey), or the zero padding of the stem conv would differ: ImportRefused.
    """
    from mobiface_tf.embedder import PREPROCESS

    probe = np.zeros((1, 1, 4, 3), np.float32)
    probe[0, 0, 1:, :] = np.eye(3, dtype=np.float32)
    out = np.asarray(PREPROCESS[preprocess](probe), np.float64)[0, 0]
    out = out * graph.scale + graph.offset                # y = A x + c
    c, a = out[0], (out[1:] - out[0]).T                    # A[i, j]: source channel i from RGB channel j
    rest = a @ np.full(3, KERAS_MEAN) + c
    if np.any(np.abs(rest) > 1e-4 * (np.abs(a).sum(axis=1) * KERAS_MEAN + 1e-12)):
        raise ImportRefused(f"the source ({preprocess} pixels, then x*{np.round(graph.scale, 6).tolist()} + "
                            f"{np.round(graph.offset, 6).tolist()} in-graph) maps mid-grey 127.5 to "
                            f"{np.round(rest, 4).tolist()}, not 0: the Keras network's (x - 127.5) / 128 with "
                            "zero padding cannot hold it exactly. Check --source_preprocess")
    return a / KERAS_SCALE


def _padding_mode(graph: SourceGraph) -> str:
    """"symmetric" when a strided layer pads kernel//2 on every side where TensorFlow's SAME would not (MXNet's
    convention on even maps), else "same". keras_map.match then checks every layer's padding either way."""
    from mobiface_tf.importer.graph import same_pads

    for layer in graph.layers:
        k, s, p = layer.kernel.shape[:2], layer.stride, tuple(layer.pads)
        if layer.kind == "dense" or k[0] == 1 or s == (1, 1):
            continue
        same = (*same_pads(layer.in_hw[0], k[0], s[0]), *same_pads(layer.in_hw[1], k[1], s[1]))
        if p != same and p == (k[0] // 2, k[0] // 2, k[1] // 2, k[1] // 2):
            return "symmetric"
    return "same"


def build_matching(graph: SourceGraph, backbone: str = "mobilefacenet", embedding_dim: int | None = None):
    """The project's Keras network shaped like `graph` (input size, embedding size, padding), untrained."""
    from mobiface_tf import models

    if backbone not in BACKBONES:
        raise ValueError(f"--backbone={backbone!r}: the importer maps onto {', '.join(BACKBONES)} only")
    dim = embedding_dim or graph.layers[-1].channels[1]
    return models.build(backbone, input_shape=(*graph.input_hw, 3), embedding_dim=int(dim),
                        padding=_padding_mode(graph), name=f"{backbone}_imported")


def check_parity(model, source_path, preprocess: str, images: np.ndarray, min_cosine: float = MIN_COSINE) -> dict:
    """Cosine, per image, between the Keras model's embedding of raw RGB `images` [N, H, W, 3] and the source
    file's own (run by LiteRT / onnxruntime with `preprocess`). Returns {num_images, cosine_min, cosine_mean};
    ImportRefused when any image is below min_cosine."""
    from mobiface_tf.embedder import l2_normalize, load_embedder

    src = load_embedder(source_path, preprocess, batch_size=16, input_size=None).embed_raw(images)
    ours = np.asarray(model.predict(np.asarray(images, np.float32), batch_size=32, verbose=0), np.float32)
    cos = np.sum(l2_normalize(src) * l2_normalize(ours), axis=1)
    worst = int(np.argmin(cos))
    report = {"num_images": int(len(images)), "cosine_min": float(cos[worst]), "cosine_mean": float(cos.mean())}
    if not cos[worst] >= min_cosine:
        raise ImportRefused(f"the imported network disagrees with the source: cosine {cos[worst]:.6f} < "
                            f"{min_cosine} on check image {worst} of {len(images)}; nothing written")
    return report


def synthetic_images(n: int, hw=(112, 112), seed: int = 0) -> np.ndarray:
    """`n` smooth random RGB images 0..255 [n, H, W, 3] (upsampled 7x7 noise plus fine noise), for a parity
    check when no real faces are given."""
    import cv2

    rng = np.random.default_rng(seed)
    out = np.empty((n, *hw, 3), np.float32)
    for i in range(n):
        coarse = rng.uniform(0, 255, (7, 7, 3)).astype(np.float32)
        out[i] = cv2.resize(coarse, (hw[1], hw[0]), interpolation=cv2.INTER_CUBIC) + rng.normal(0, 8, (*hw, 3))
    return np.clip(out, 0, 255).round()


def recalibrate_bn(model, faces, batch_size: int = 16) -> int:
    """Give every BN that holds a folded affine (gamma 1, moving mean 0, moving variance 1 - eps, as the
    importer writes for a source with BN folded into its convs) the real statistics of its input on `faces`
    (raw RGB [N, H, W, 3]), without changing what the network computes in inference mode:

        mean = mu, variance = max(sigma^2, eps) - eps, gamma = sqrt(variance + eps), beta = beta + mu

    so gamma * (z - mean) / sqrt(variance + eps) + beta is still z + beta. In training mode (batch
    statistics) the network then computes nearly what it computes in inference mode, which fine-tuning
    needs; with identity statistics it would not. Returns the number of BN layers changed.
    """
    import keras

    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    folded = []
    for bn in bns:
        g, _, m, v = bn.get_weights()
        if np.all(g == 1) and np.all(m == 0) and np.allclose(v, 1.0 - bn.epsilon, rtol=0, atol=1e-7):
            folded.append(bn)
    if not folded:
        return 0
    probe = keras.Model(model.input, [bn.input for bn in folded])
    sums = [np.zeros(bn.gamma.shape[0]) for bn in folded]
    sqs = [np.zeros(bn.gamma.shape[0]) for bn in folded]
    count = [0] * len(folded)
    for start in range(0, len(faces), batch_size):
        outs = probe(np.asarray(faces[start:start + batch_size], np.float32), training=False)
        for i, z in enumerate(outs if isinstance(outs, (list, tuple)) else [outs]):
            z = np.asarray(z, np.float64).reshape(-1, z.shape[-1])
            sums[i] += z.sum(axis=0)
            sqs[i] += np.square(z).sum(axis=0)
            count[i] += len(z)
    for bn, s, q, n in zip(folded, sums, sqs, count):
        mu = s / n
        var = np.maximum(np.maximum(q / n - mu * mu, 0.0), bn.epsilon) - bn.epsilon
        _, beta, _, _ = bn.get_weights()
        bn.set_weights([np.sqrt(var + bn.epsilon), beta + mu, mu, var])
    return len(folded)


def import_model(source, backbone: str = "mobilefacenet", embedding_dim: int | None = None,
                 source_preprocess: str | None = None, check_images=None, num_check: int = 16,
                 min_cosine: float = MIN_COSINE, bn_faces=None):
    """Import a published MobileFaceNet into the project's Keras network.

    Args:
      source: .tflite (float) or .onnx (NCHW) file.
      embedding_dim: expected embedding size (None: the source's); a different one is refused.
      source_preprocess: what the source file expects to be fed (a name of embedder.PREPROCESS; None: what
        the file states, else "raw").
      check_images: real faces uint8/float [N, H, W, 3] for the parity check (None: `num_check` synthetic ones).
      min_cosine: the least per-image cosine with the source that is accepted.
      bn_faces: real faces [N, H, W, 3]; when given, folded BN layers get these faces' statistics
        (recalibrate_bn: the same function in inference mode, fit for fine-tuning). None: identity statistics.
    Returns (keras.Model taking raw RGB 0..255, report dict).
    Raises ImportRefused (one line) when the graph does not fit or parity fails; ValueError on bad input.
    """
    from mobiface_tf.embedder import PREPROCESS, stated_preprocess
    from mobiface_tf.importer import keras_map

    preprocess = source_preprocess or stated_preprocess(source) or "raw"
    if preprocess not in PREPROCESS:
        raise ValueError(f"--source_preprocess={preprocess!r}; expected one of {sorted(PREPROCESS)}")
    graph = read_source(source)
    matrix = input_matrix(graph, preprocess)
    model = build_matching(graph, backbone, embedding_dim)
    pairs = keras_map.match(graph, model)
    keras_map.assign(pairs, stem_matrix=matrix)
    recalibrated = recalibrate_bn(model, bn_faces) if bn_faces is not None else 0
    images = synthetic_images(num_check, graph.input_hw) if check_images is None else check_images
    parity = check_parity(model, source, preprocess, images, min_cosine)
    report = {"source": str(source), "format": graph.fmt, "source_preprocess": preprocess,
              "padding": _padding_mode(graph), "layers": len(graph.layers), "residual_adds": graph.items.count(ADD),
              "embedding_dim": int(model.output.shape[-1]), "input_hw": list(graph.input_hw),
              "check": "real faces" if check_images is not None else "synthetic images",
              "bn_recalibrated": recalibrated, **parity}
    return model, report


__all__ = ["BACKBONES", "ImportRefused", "MIN_COSINE", "build_matching", "check_parity", "import_model",
           "input_matrix", "read_source", "recalibrate_bn", "synthetic_images"]
