"""One embedding API over .keras files, SavedModel directories and .tflite files.

    emb = load_embedder("model.tflite").embed(images, flip=True)   # [N, D] float32, unit L2 norm

`images` are RGB, uint8 or float in 0..255, shape [N, H, W, 3] (one image [H, W, 3] is accepted too).
Our own models take exactly that (their first layer does (x - 127.5) / 128). Foreign models expect
other conventions; `preprocess` converts raw RGB 0..255 to what the model wants:

    raw            RGB 0..255 (default; our models, the InsightFace reference .tflite)
    bgr            BGR 0..255 (Caffe / OpenCV-trained models)
    minus1to1      RGB (x - 127.5) / 127.5
    bgr_minus1to1  BGR (x - 127.5) / 127.5
    arcface        RGB (x - 127.5) / 128, for models exported without their normalisation layer
    zero_one       RGB x / 255

Flip test (as in the ArcFace / InsightFace evaluations): embed the image and its horizontal mirror,
sum the two embeddings, then L2-normalise.

Output shape: an embedding output [N, D] is used as is; [N, 1, 1, D] and [N, D, 1, 1] (a 1x1 spatial head kept
by a converted model, NHWC or NCHW) are flattened to [N, D]; any other output is refused when the model is
loaded (`embedding_size`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

PREPROCESS = {
    "raw": lambda x: x,
    "bgr": lambda x: x[..., ::-1],
    "minus1to1": lambda x: (x - 127.5) / 127.5,
    "bgr_minus1to1": lambda x: (x[..., ::-1] - 127.5) / 127.5,
    "arcface": lambda x: (x - 127.5) / 128.0,
    "zero_one": lambda x: x / 255.0,
}


CROP_SIZE = 112  # the ArcFace template's side (mobiface_tf.images.CROP_SIZE); models must take it by default


class EmbeddingError(ValueError):
    """A model gave NaN / Inf embeddings: nothing (answer, report, threshold) may be built from them."""


def check_finite_embeddings(emb: np.ndarray, where: str) -> np.ndarray:
    """`emb` [N, D] unchanged when every value is finite; EmbeddingError (one line naming `where`) otherwise."""
    bad = ~np.isfinite(emb).all(axis=-1)
    if bad.any():
        raise EmbeddingError(f"model {where} gives NaN/Inf embeddings for {int(bad.sum())} of {len(emb)} images, so "
                             "it cannot answer: it is broken (e.g. saved from a diverged training run). Retrain from "
                             "a finite checkpoint, or use another model")
    return emb


def _shape_text(shape) -> str:
    """'[N, 1, 1, 128]': a model's output shape for messages, unknown axes as N (batch) or ?."""
    if shape is None:
        return "an unknown shape"
    dims = [str(int(d)) if isinstance(d, (int, np.integer)) and d >= 0 else ("N" if k == 0 else "?")
            for k, d in enumerate(shape)]
    return f"[{', '.join(dims)}]"


def embedding_size(shape, path) -> int:
    """D of a model's embedding output `shape`: [N, D], or [N, 1, 1, D] / [N, D, 1, 1] (flattened to [N, D]).

    `shape` lists the output's axes, the batch first (it may be unknown: None, -1 or a symbolic name). Any other
    shape, or an unknown D, raises ValueError: one line naming the model `path` and its output shape.
    """
    rest = [int(d) if isinstance(d, (int, np.integer)) and d > 0 else None for d in shape[1:]] \
        if shape is not None and len(shape) >= 2 else []
    dim = None
    if len(rest) == 1:
        dim = rest[0]
    elif len(rest) == 3 and rest[:2] == [1, 1]:  # NHWC 1x1 head: [N, 1, 1, D]
        dim = rest[2]
    elif len(rest) == 3 and rest[1:] == [1, 1]:  # NCHW 1x1 head: [N, D, 1, 1]
        dim = rest[0]
    if dim is None:
        raise ValueError(f"model {str(path)!r} outputs {_shape_text(shape)}; an embedding must be [N, D] "
                         "([N, 1, 1, D] and [N, D, 1, 1] are flattened). Add a Flatten or a Reshape to [N, D] at the "
                         "end of the model and export it again")
    return dim


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows of `x` [N, D] divided by their L2 norm (at least `eps`), as float32."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norm, eps)).astype(np.float32)


class Embedder:
    """Base class: batching, preprocessing, flip and normalisation. Subclasses implement `_forward`."""

    def __init__(self, path: Path, preprocess: str, batch_size: int, input_hwc: tuple, embedding_dim: int):
        if preprocess not in PREPROCESS:
            raise ValueError(f"unknown preprocess {preprocess!r}; choose one of {sorted(PREPROCESS)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.path = Path(path)
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.input_hwc = tuple(input_hwc)  # None entries mean "any size"
        self.embedding_dim = int(embedding_dim)
        self.flip = False  # default of embed(flip=None): the CLIs set it from the threshold's sidecar

    def _forward(self, batch: np.ndarray) -> np.ndarray:  # float32 [n, H, W, 3] -> [n, D]
        raise NotImplementedError

    def _check(self, images) -> np.ndarray:
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be [N, H, W, 3] RGB, got shape {images.shape}")
        want = self.input_hwc
        if any(w is not None and w != g for w, g in zip(want, images.shape[1:])):
            raise ValueError(f"images are {images.shape[1:]} but model {str(self.path)!r} expects {want}; "
                             "align/resize the faces to the model's input size first")
        return images

    def embed_raw(self, images) -> np.ndarray:
        """Un-normalised embeddings [N, D] (no flip)."""
        images = self._check(images)
        out = np.empty((len(images), self.embedding_dim), np.float32)
        prep = PREPROCESS[self.preprocess]
        for start in range(0, len(images), self.batch_size):
            batch = prep(images[start:start + self.batch_size].astype(np.float32))
            y = np.asarray(self._forward(np.ascontiguousarray(batch, dtype=np.float32)))
            if y.size != len(batch) * self.embedding_dim:  # the shape was checked at load; a runtime may differ
                raise ValueError(f"model {str(self.path)!r} gave an output of shape {list(y.shape)} for {len(batch)} "
                                 f"images; expected [{len(batch)}, {self.embedding_dim}] or that with 1x1 axes")
            out[start:start + len(batch)] = y.reshape(len(batch), self.embedding_dim)  # [n, 1, 1, D] -> [n, D]
        return check_finite_embeddings(out, repr(str(self.path)))

    def embed(self, images, flip: bool | None = None) -> np.ndarray:
        """L2-normalised embeddings [N, D]; with flip, normalise(f(x) + f(mirror(x))). flip=None: self.flip."""
        images = self._check(images)
        emb = self.embed_raw(images)
        if self.flip if flip is None else flip:
            emb = emb + self.embed_raw(images[:, :, ::-1])
        return l2_normalize(emb)


class _KerasEmbedder(Embedder):
    def __init__(self, path, preprocess, batch_size):
        import keras

        # Our models are built from stock Keras layers only: load_model needs no custom-object import.
        import zipfile

        if not zipfile.is_zipfile(path):  # a .keras file is a zip archive; Keras itself says "File not found"
            raise ValueError(f"not a Keras model file: {str(path)!r} is not a .keras (zip) archive; pass a model "
                             "saved with model.save('x.keras')")
        self.model = keras.models.load_model(path, compile=False)
        in_shape, out_shape = self.model.input_shape, self.model.output_shape
        if isinstance(in_shape, list) or isinstance(out_shape, list):
            raise ValueError(f"{str(path)!r} has {len(in_shape)} inputs / outputs; expected one image input and one embedding output")
        super().__init__(path, preprocess, batch_size, in_shape[1:], embedding_size(out_shape, path))

    def _forward(self, batch):
        return np.asarray(self.model.predict_on_batch(batch), np.float32)


class _SavedModelEmbedder(Embedder):
    def __init__(self, path, preprocess, batch_size):
        import tensorflow as tf

        self._loaded = tf.saved_model.load(str(path))
        if "serving_default" not in self._loaded.signatures:
            raise ValueError(f"SavedModel {str(path)!r} has no 'serving_default' signature "
                             f"(has {list(self._loaded.signatures)}); export it with model.export(path)")
        self._fn = self._loaded.signatures["serving_default"]
        inputs = self._fn.structured_input_signature[1]
        if len(inputs) != 1:
            raise ValueError(f"SavedModel {str(path)!r} serving signature takes {len(inputs)} inputs; expected one image tensor")
        (self._input_name, spec), = inputs.items()
        outputs = self._fn.structured_outputs
        if len(outputs) != 1:
            raise ValueError(f"SavedModel {str(path)!r} returns {sorted(outputs)}; expected a single embedding output")
        (self._output_name, out_spec), = outputs.items()
        self._tf = tf
        out_shape = out_spec.shape.as_list() if out_spec.shape.rank is not None else None
        super().__init__(path, preprocess, batch_size, tuple(spec.shape[1:]), embedding_size(out_shape, path))

    def _forward(self, batch):
        result = self._fn(**{self._input_name: self._tf.constant(batch)})
        return result[self._output_name].numpy().astype(np.float32)


# TFLite (de)quantisation lives in mobiface_tf.litert; re-exported here for existing importers.
from mobiface_tf.litert import dequantize_output, quantize_input  # noqa: E402,F401


class _TFLiteEmbedder(Embedder):
    def __init__(self, path, preprocess, batch_size, num_threads):
        from mobiface_tf import litert

        self._litert = litert
        self._interp = litert.make_interpreter(model_path=path, num_threads=num_threads)
        inp, out = litert.io_details(self._interp, repr(str(path)))
        super().__init__(path, preprocess, batch_size, tuple(int(s) for s in inp["shape"][1:]),
                         embedding_size([int(s) for s in out["shape"]], path))

    def _forward(self, batch):
        # Fixed-batch models (ours: 1) are run chunk by chunk, dynamic-batch ones resized (litert.run_batched).
        return self._litert.run_batched(self._interp, batch, self.batch_size)


ONNX_PREPROCESS_KEY = "preprocess"  # metadata_props key a model may use to state its pixel convention


def _onnx_dims(shape) -> list:
    """ONNX input shape -> ints, with None for symbolic / unknown dims."""
    return [d if isinstance(d, int) and d > 0 else None for d in shape]


class _OnnxEmbedder(Embedder):
    """An ONNX face model through onnxruntime (CPU). NCHW or NHWC is read from the input shape: a 4-D input
    whose axis 1 is 3 is NCHW (InsightFace's buffalo recognition models), one whose last axis is 3 is NHWC."""

    def __init__(self, path, preprocess, batch_size, num_threads):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if num_threads:
            opts.intra_op_num_threads = int(num_threads)
            opts.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail / InvalidGraph / InvalidProtobuf classes
            raise ValueError(f"{str(path)!r} is not a readable ONNX model ({type(e).__name__}: "
                             f"{' '.join(str(e).split())[:200]})") from None
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"{str(path)!r} has {len(inputs)} inputs / {len(outputs)} outputs; expected one image "
                             "input and one embedding output")
        self._in, self._out = inputs[0], outputs[0]
        dims = _onnx_dims(self._in.shape)
        if len(dims) != 4 or 3 not in (dims[1], dims[3]):
            raise ValueError(f"{str(path)!r} input {self._in.name!r} has shape {self._in.shape}; expected a face "
                             "image batch [N, 3, 112, 112] (NCHW) or [N, 112, 112, 3] (NHWC)")
        self._nchw = dims[1] == 3 and dims[3] != 3
        hw = (dims[2], dims[3]) if self._nchw else (dims[1], dims[2])
        if any(d is not None and d != 112 for d in hw):
            raise ValueError(f"{str(path)!r} takes {hw[0]}x{hw[1]} images (input shape {self._in.shape}); "
                             "mobiface_tf embeds 112x112 aligned faces")
        self._dtype = np.float16 if self._in.type == "tensor(float16)" else np.float32
        if self._in.type not in ("tensor(float)", "tensor(float16)"):
            raise ValueError(f"{str(path)!r} input is {self._in.type}; expected float pixels")
        self._fixed_batch = dims[0]
        out_shape = _onnx_dims(self._out.shape or [])
        if len(out_shape) < 2 or None in out_shape[1:]:
            # A symbolic (or unknown) output axis: run once on a blank face to learn the shape.
            probe = np.zeros((self._fixed_batch or 1, 3, 112, 112) if self._nchw else
                             (self._fixed_batch or 1, 112, 112, 3), self._dtype)
            out_shape = list(self._session.run([self._out.name], {self._in.name: probe})[0].shape)
        super().__init__(path, preprocess, batch_size, (112, 112, 3), embedding_size(out_shape, path))

    def _run(self, chunk):
        x = np.transpose(chunk, (0, 3, 1, 2)) if self._nchw else chunk
        out = self._session.run([self._out.name], {self._in.name: np.ascontiguousarray(x, self._dtype)})[0]
        return np.asarray(out, np.float32).reshape(len(chunk), -1)

    def _forward(self, batch):
        step = self._fixed_batch or len(batch)
        if self._fixed_batch and self._fixed_batch != 1 and len(batch) % self._fixed_batch:
            pad = self._fixed_batch - len(batch) % self._fixed_batch  # a fixed batch > 1: pad the last chunk
            batch = np.concatenate([batch, np.zeros((pad, *batch.shape[1:]), batch.dtype)])
            return np.concatenate([self._run(batch[i:i + step]) for i in range(0, len(batch), step)])[:-pad]
        return np.concatenate([self._run(batch[i:i + step]) for i in range(0, len(batch), step)])


def stated_preprocess(path) -> str | None:
    """The pixel convention a model states, or None when it states none (then --preprocess decides).

    - Our .keras / SavedModel / .tflite models normalise inside and take raw RGB 0..255: "raw" is not
      stated by the file, so None (the CLIs' default is raw).
    - ONNX: metadata_props["preprocess"] when it names one of PREPROCESS. Otherwise InsightFace's own rule
      for its recognition models (insightface/model_zoo/arcface_onnx.py): a graph that starts with Sub and
      Mul nodes normalises inside ("raw"); one that does not expects RGB (x - 127.5) / 127.5 ("minus1to1").
    """
    path = Path(path)
    if path.suffix.lower() != ".onnx" or not path.is_file():
        return None
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return None
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get(ONNX_PREPROCESS_KEY) in PREPROCESS:
        return meta[ONNX_PREPROCESS_KEY]
    first = [n.op_type for n in model.graph.node[:8]]
    if not first:
        return None
    return "raw" if ("Sub" in first and "Mul" in first) else "minus1to1"


def load_embedder(path, preprocess: str | None = None, batch_size: int = 64, num_threads: int | None = None,
                  input_size: int | None = CROP_SIZE) -> Embedder:
    """Load a .keras file, a SavedModel directory, a .tflite or an .onnx file behind one `embed` API.

    preprocess: one of PREPROCESS; None means what the model states (stated_preprocess), else "raw".
    num_threads: LiteRT / onnxruntime threads (None: the runtime's choice).
    input_size: the model must take [N, input_size, input_size, 3] images (or any size); None: any input.
    An embedding output [N, 1, 1, D] or [N, D, 1, 1] is flattened to [N, D] (`embedding_size`).
    Raises FileNotFoundError for a missing path and ValueError (one line) for an unknown format, a file that
    is not a model, a model that is not one image input -> one embedding output, an output of another shape
    (naming the model and that shape), or a model of another input size.
    """
    emb = _load_embedder(path, preprocess, batch_size, num_threads)
    hwc = tuple(emb.input_hwc)
    if input_size is not None and (len(hwc) != 3 or hwc[2] not in (3, None) or
                                   any(d is not None and d != input_size for d in hwc[:2])):
        raise ValueError(f"model {str(path)!r} takes [N, {', '.join(str(d) for d in hwc)}] images; aligned faces "
                         f"are [N, {input_size}, {input_size}, 3] (the ArcFace template). Use a model of "
                         f"{input_size}x{input_size} RGB faces")
    return emb


def _load_embedder(path, preprocess, batch_size, num_threads) -> Embedder:
    path = Path(path)
    if preprocess is None:
        preprocess = stated_preprocess(path) or "raw"
    if preprocess not in PREPROCESS:
        raise ValueError(f"unknown preprocess {preprocess!r}; choose one of {sorted(PREPROCESS)}")
    if not path.exists():
        raise FileNotFoundError(f"model not found: {str(path)!r}. Pass --model=PATH (.keras, SavedModel dir, .tflite "
                                "or .onnx)")
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise ValueError(f"{str(path)!r} is a directory without saved_model.pb; expected a SavedModel (model.export(path))")
        return _SavedModelEmbedder(path, preprocess, batch_size)
    suffix = path.suffix.lower()
    if suffix == ".keras":
        return _KerasEmbedder(path, preprocess, batch_size)
    if suffix == ".tflite":
        return _TFLiteEmbedder(path, preprocess, batch_size, num_threads)
    if suffix == ".onnx":
        return _OnnxEmbedder(path, preprocess, batch_size, num_threads)
    raise ValueError(f"unknown model format {str(path)!r}: expected a .keras file, a SavedModel directory, a .tflite "
                     "or an .onnx file")


# The threshold sidecar is read and written next to the model loader; re-exported for the CLIs.
from mobiface_tf.sidecar import (SidecarError, read_sidecar, read_sidecar_settings, read_threshold,  # noqa: E402,F401
                                 sidecar_path, write_sidecar)
