"""TensorFlow's fused batch-norm kernel inside the training step, for Keras 3's BatchNormalization layers.

Keras 3 computes a training-mode BN from generic ops: moments (mean, squared difference, mean), then
x * scale + offset, and their gradients (Mul, Sum, Tile, SquaredDifference ...). On the 2-core CPU those ops
are among the most expensive of a MobiFace training step (tools/research/profile_step.py; docs/training.md,
"Where a training step goes"). TF's FusedBatchNormV3 does the same work in one kernel forward and one backward.

`fuse_batchnorm(model)` makes every 4-D channels-last BatchNormalization layer of `model` run that kernel when
it trains; inference, other ranks, masks and renorm keep Keras' own code. The layer, its weights and the saved
model are unchanged (the exported network is built afresh from the builder), so only the training step differs:
  * forward output: the same normalisation (within float rounding);
  * moving statistics: the same update, moving = m * moving + (1 - m) * batch statistic, with the batch
    variance biased (divided by n = B*H*W, as Keras does): the kernel's Bessel-corrected n/(n-1) is undone.
Only for the TensorFlow backend.
"""
from __future__ import annotations

import types

import keras
import tensorflow as tf

__all__ = ["fuse_batchnorm"]


def _fused_call(self, inputs, training=None, mask=None):
    if not (training and self.trainable) or mask is not None or self.renorm or self.synchronized \
            or len(inputs.shape) != 4 \
            or self.axis not in (-1, 3):
        return self._keras_call(inputs, training=training, mask=mask)
    x = tf.cast(inputs, tf.float32)
    channels = x.shape[-1]
    scale = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones([channels], tf.float32)
    offset = tf.cast(self.beta, tf.float32) if self.center else tf.zeros([channels], tf.float32)
    y, mean, variance = tf.compat.v1.nn.fused_batch_norm(x, scale, offset, epsilon=self.epsilon,
                                                         data_format="NHWC", is_training=True)
    n = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), tf.float32)
    variance = variance * (n - 1.0) / tf.maximum(n, 2.0)  # undo the kernel's Bessel correction (Keras: biased)
    m = self.momentum
    self.moving_mean.assign(self.moving_mean * m + tf.stop_gradient(mean) * (1.0 - m))
    self.moving_variance.assign(self.moving_variance * m + tf.stop_gradient(variance) * (1.0 - m))
    return tf.cast(y, self.compute_dtype)


def fuse_batchnorm(model: keras.Model) -> int:
    """Make `model`'s BatchNormalization layers train through FusedBatchNormV3 (see the module docstring);
    returns how many layers were switched. Idempotent."""
    count = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization) and not hasattr(layer, "_keras_call"):
            layer._keras_call = layer.call
            layer.call = types.MethodType(_fused_call, layer)
            count += 1
    return count
