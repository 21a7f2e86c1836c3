"""MobileFaceNet (Chen, Liu, Gao, Han, 2018: "MobileFaceNets: Efficient CNNs for Accurate Real-Time
Face Verification on Mobile Devices", arXiv:1804.07573), Table 1.

The paper reports about 0.99 M parameters and 221 M MAdds with a 128-d embedding.
"""
import keras

from mobiface_tf.models.layers import bottleneck, conv_bn, embedding_head, normalize

# Table 1 of Chen et al. (MobileNetV2 notation): t = expansion factor on the input channels,
# c = output channels, n = repeats, s = stride of the first repeat.
#         t   c    n  s
TABLE_1 = [
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
]


def MobileFaceNet(input_shape=(112, 112, 3), embedding_dim=128, head="gdc", name="mobilefacenet", padding="same"):
    """Build MobileFaceNet: conv3x3/2 64, depthwise 3x3 64, the Table 1 bottlenecks, conv1x1 512,
    linear global depthwise conv 7x7, linear 1x1 conv to the embedding. PReLU throughout.

    `head` defaults to the paper's "gdc"; "fc" and "gap" exist for like-for-like comparison with MobiFace.
    `padding` of the strided 3x3 layers: "same" (TensorFlow's, the default) or "symmetric" (1 pixel on every
    side, as InsightFace's MXNet network; used by mobiface_tf.importer to hold published weights exactly).
    """
    if padding not in ("same", "symmetric"):
        raise ValueError(f"padding must be 'same' or 'symmetric', got {padding!r}")
    inputs = keras.Input(shape=input_shape, name="image")
    x = normalize(inputs)
    x = conv_bn(x, 64, 3, 2, "stem", padding=padding)
    x = conv_bn(x, 64, 3, 1, "stem_dw", depthwise=True)
    for stage, (t, c, n, s) in enumerate(TABLE_1, start=1):
        for i in range(n):
            x = bottleneck(x, t * x.shape[-1], c, s if i == 0 else 1, f"stage{stage}_block{i}",
                           padding=padding)
    x = conv_bn(x, 512, 1, 1, "head")
    outputs = embedding_head(x, head, embedding_dim)
    return keras.Model(inputs, outputs, name=name)
