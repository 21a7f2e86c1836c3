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
"""
from __future__ import annotations

import importlib
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


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
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
            out[start:start + len(batch)] = self._forward(np.ascontiguousarray(batch, dtype=np.float32))
        return out

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

        # Our models register custom layers with keras.saving.register_keras_serializable in
        # mobiface_tf.models; importing it makes them resolvable by load_model.
        try:
            importlib.import_module("mobiface_tf.models")
        except ModuleNotFoundError as e:
            if e.name != "mobiface_tf.models":
                raise
        self.model = keras.models.load_model(path, compile=False)
        in_shape, out_shape = self.model.input_shape, self.model.output_shape
        if isinstance(in_shape, list) or isinstance(out_shape, list):
            raise ValueError(f"{str(path)!r} has {len(in_shape)} inputs / outputs; expected one image input and one embedding output")
        super().__init__(path, preprocess, batch_size, in_shape[1:], out_shape[-1])

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
        super().__init__(path, preprocess, batch_size, tuple(spec.shape[1:]), out_spec.shape[-1])

    def _forward(self, batch):
        result = self._fn(**{self._input_name: self._tf.constant(batch)})
        return result[self._output_name].numpy().astype(np.float32)


def quantize_input(x, detail: dict) -> np.ndarray:
    """Float input -> the tensor's dtype; for int8/uint8 inputs q = round(x / scale) + zero_point (TFLite's
    affine quantisation, `detail` from get_input_details())."""
    dtype = detail["dtype"]
    if np.issubdtype(dtype, np.integer):
        scale, zero = detail["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)
    return np.asarray(x).astype(dtype)


def dequantize_output(q, detail: dict) -> np.ndarray:
    """Output tensor -> float32; for int8/uint8 outputs (q - zero_point) * scale."""
    if np.issubdtype(detail["dtype"], np.integer):
        scale, zero = detail["quantization"]
        return (q.astype(np.float32) - zero) * scale
    return q.astype(np.float32)


class _TFLiteEmbedder(Embedder):
    def __init__(self, path, preprocess, batch_size, num_threads):
        from ai_edge_litert.interpreter import Interpreter

        self._interp = Interpreter(model_path=str(path), num_threads=num_threads)
        inputs, outputs = self._interp.get_input_details(), self._interp.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"{str(path)!r} has {len(inputs)} inputs / {len(outputs)} outputs; expected one of each")
        self._in, self._out = inputs[0], outputs[0]
        shape = self._in["shape"]
        if len(shape) != 4:
            raise ValueError(f"{str(path)!r} input shape {list(shape)} is not [N, H, W, 3]")
        # A model whose signature fixes batch 1 is looped image by image; a dynamic batch is resized.
        self._dynamic_batch = int(self._in["shape_signature"][0]) == -1
        batch = batch_size if self._dynamic_batch else 1
        if batch != int(shape[0]):
            self._interp.resize_tensor_input(self._in["index"], [batch, *shape[1:]])
        self._interp.allocate_tensors()
        self._batch = batch
        super().__init__(path, preprocess, batch_size, tuple(int(s) for s in shape[1:]), int(self._out["shape"][-1]))

    def _run(self, chunk):
        n = len(chunk)
        if n != self._batch:  # last, partial batch of a dynamic-batch model
            self._interp.resize_tensor_input(self._in["index"], [n, *self.input_hwc])
            self._interp.allocate_tensors()
            self._batch = n
        self._interp.set_tensor(self._in["index"], quantize_input(chunk, self._in))
        self._interp.invoke()
        return dequantize_output(self._interp.get_tensor(self._out["index"]), self._out)

    def _forward(self, batch):
        step = len(batch) if self._dynamic_batch else 1
        return np.concatenate([self._run(batch[i:i + step]) for i in range(0, len(batch), step)])


def load_embedder(path, preprocess: str = "raw", batch_size: int = 64, num_threads: int | None = None) -> Embedder:
    """Load a .keras file, a SavedModel directory or a .tflite file behind one `embed` API."""
    path = Path(path)
    if preprocess not in PREPROCESS:
        raise ValueError(f"unknown preprocess {preprocess!r}; choose one of {sorted(PREPROCESS)}")
    if not path.exists():
        raise FileNotFoundError(f"model not found: {str(path)!r}. Pass --model=PATH (.keras, SavedModel dir or .tflite)")
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise ValueError(f"{str(path)!r} is a directory without saved_model.pb; expected a SavedModel (model.export(path))")
        return _SavedModelEmbedder(path, preprocess, batch_size)
    suffix = path.suffix.lower()
    if suffix == ".keras":
        return _KerasEmbedder(path, preprocess, batch_size)
    if suffix == ".tflite":
        return _TFLiteEmbedder(path, preprocess, batch_size, num_threads)
    raise ValueError(f"unknown model format {str(path)!r}: expected a .keras file, a SavedModel directory or a .tflite file")
