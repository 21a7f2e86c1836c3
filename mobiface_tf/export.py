"""Keras -> TFLite conversion.

The graph is frozen (variables -> constants) before conversion. Converting the live concrete function
with its variables makes the converter keep large weights (the 12.8 M-weight Table I FC kernel) as
resource variables: the .tflite then has VAR_HANDLE/READ_VARIABLE ops that are never initialised and
returns NaN. Freezing first avoids that, and the input is fixed at batch 1 so XNNPACK gets one partition.
"""
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2


def frozen_function(model, batch_size=1):
    """The inference function of `model` with a fixed [batch, H, W, C] input, variables frozen to constants."""
    spec = tf.TensorSpec([batch_size, *model.input_shape[1:]], tf.float32, name="image")
    fn = tf.function(lambda image: model(image, training=False)).get_concrete_function(spec)
    return convert_variables_to_constants_v2(fn)


def to_tflite(model) -> bytes:
    """float32 TFLite flatbuffer of `model` (batch 1)."""
    return tf.lite.TFLiteConverter.from_concrete_functions([frozen_function(model)]).convert()
