"""BatchNorm statistics of a random-init network, re-estimated on real faces (benchmarking only)."""
from __future__ import annotations

import keras
import numpy as np

# A freshly built network has BN moving statistics mean 0, variance 1, which do not match its
# activations: through a deep random ReLU net (MobileNetV1) they shrink to ~1e-7, and a full-int8
# model then quantises them to zero (cosine 0, an implausibly fast latency). A trained network's BN
# layers normalise their inputs, so re-estimating the moving statistics on real faces gives the
# random-init benchmark the activation ranges of a trained model. Never apply this to a trained model:
# its statistics are already right (tools/to_tflite.py only calls it for --backbone).
def calibrate_batchnorm(model: keras.Model, images, steps: int = 4, batch_size: int = 32) -> dict:
    """Re-estimate every BatchNormalization's moving mean/variance on `images`, in place.

    `steps` forward passes with training=True over batches of `images` (raw RGB 0-255); at pass k
    (from 0) each BN's momentum is set to k/(k+1), so the moving statistics end as the plain average
    of the per-batch statistics. Nothing else changes: training=True only makes BN use batch
    statistics and update its moving ones (no optimizer runs; the networks have no dropout).
    Returns {"steps", "batch_size", "num_bn"}.
    """
    if steps < 1 or batch_size < 2:
        raise ValueError(f"calibrate_batchnorm needs steps >= 1 and batch_size >= 2, got steps={steps}, "
                         f"batch_size={batch_size}")
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or len(images) < 2:
        raise ValueError(f"calibrate_batchnorm needs images [N>=2, H, W, 3], got shape {images.shape}")
    bns = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.BatchNormalization)]
    if not bns:
        return {"steps": 0, "batch_size": batch_size, "num_bn": 0}
    momenta = [bn.momentum for bn in bns]
    batch_size = min(batch_size, len(images))
    rng = np.random.default_rng(0)
    try:
        for k in range(steps):
            for bn in bns:
                bn.momentum = k / (k + 1)  # k = 0: take the batch statistics outright
            batch = images[rng.choice(len(images), batch_size, replace=False)]
            model(batch, training=True)
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
    return {"steps": steps, "batch_size": batch_size, "num_bn": len(bns)}


def activation_stds(model: keras.Model, images, kind=keras.layers.BatchNormalization) -> dict:
    """Inference-mode std of every `kind` layer's output on `images` (name -> float): a diagnostic."""
    layers = [layer for layer in model.layers if isinstance(layer, kind)]
    probe = keras.Model(model.inputs, [layer.output for layer in layers])
    outputs = probe(np.asarray(images, np.float32), training=False)
    return {layer.name: float(np.std(np.asarray(out))) for layer, out in zip(layers, outputs)}
