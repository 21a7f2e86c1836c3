"""MobileNetV1 (Howard et al., 2017: "MobileNets: Efficient Convolutional Neural Networks for Mobile
Vision Applications", arXiv:1704.04861), Table 1, run at 112x112 with a face-embedding head.

At 112x112 the five stride-2 stages leave a 4x4x1024 map. Face-recognition ports of MobileNet often
drop the last stride to keep 7x7 (`final_stride=1`); with the literal "fc" head that variant has
~28.9 M parameters (~115.6 MB, 110 MiB fp32), the only configuration we found near the 112 MB the
MobiFace paper reports for its MobileNetV1 re-implementation (see README).
"""
import keras

from mobiface_tf.models.layers import conv_bn, embedding_head, normalize

# Table 1 of Howard et al.: each row is a depthwise-separable unit (3x3 depthwise, then 1x1 pointwise).
# `final` marks the unit whose stride is `final_stride` (the 1024-channel stage, Table 1's "Conv dw / s2").
#       pointwise filters, depthwise stride, final
TABLE_1 = [
    (64, 1, False),
    (128, 2, False), (128, 1, False),
    (256, 2, False), (256, 1, False),
    (512, 2, False), (512, 1, False), (512, 1, False), (512, 1, False), (512, 1, False), (512, 1, False),
    (1024, 2, True), (1024, 1, False),
]


def MobileNetV1(input_shape=(112, 112, 3), embedding_dim=512, head="gdc", final_stride=2, alpha=1.0,
                name="mobilenet_v1"):
    """Build MobileNetV1 (BN + ReLU after every conv, as in the paper) with an embedding head.

    Args:
      final_stride: stride of the 1024-channel stage (2 as in the paper -> 4x4 map at 112x112;
        1 keeps 7x7 as many face-recognition ports do).
      alpha: width multiplier.
    """
    if final_stride not in (1, 2):
        raise ValueError(f"final_stride must be 1 or 2, got {final_stride!r}")
    inputs = keras.Input(shape=input_shape, name="image")
    x = normalize(inputs)
    x = conv_bn(x, int(32 * alpha), 3, 2, "stem", act="relu")
    for i, (filters, stride, final) in enumerate(TABLE_1):
        stride = final_stride if final else stride
        x = conv_bn(x, None, 3, stride, f"block{i}_dw", act="relu", depthwise=True)
        x = conv_bn(x, int(filters * alpha), 1, 1, f"block{i}_pw", act="relu")
    outputs = embedding_head(x, head, embedding_dim)
    return keras.Model(inputs, outputs, name=name)
