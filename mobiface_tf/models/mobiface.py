"""MobiFace (Duong, Quach, Luu, Le, Ricanek, 2018: "MobiFace: A Lightweight Deep Learning Face
Recognition on Mobile Devices", arXiv:1811.11080), Table I.

Stem: 3x3 conv /2, 64 -> 3x3 depthwise, 64. Then the bottleneck stages below, a 1x1 conv to 512
and the embedding head. BN after every conv; per-channel PReLU after every conv except the
"Linear" projections.

Reproduction note: the literal Table I head (Flatten 7x7x512 -> FC 512) has 15.15 M parameters,
about 60.6 MB in float32, so it cannot be the paper's reported 9.3 MB model. The convolutional body
alone is about 2.3 M parameters (~9.2 MB), which suggests the 9.3 MB figure ignores the FC layer or
uses a much smaller head. `head="gdc"` (MobileFaceNet's global depthwise conv) gives ~2.6 M.
"""
import keras

from mobiface_tf.models.layers import bottleneck, conv_bn, embedding_head, normalize

# Table I bottleneck stages. Each stage is one Block (stride 2, no shortcut) followed by
# `rblocks` RBlocks (stride 1, identity shortcut). Channel counts are absolute, as printed.
#            expand  out  rblocks
TABLE_I = [
    (128, 64, 2),
    (256, 128, 3),
    (512, 256, 6),
]
STEM_CHANNELS = 64
HEAD_CHANNELS = 512


def MobiFace(input_shape=(112, 112, 3), embedding_dim=512, head="fc", name="mobiface"):
    """Build MobiFace as in Table I of Duong et al. (2018).

    Args:
      input_shape: HxWx3 of raw RGB 0-255 float input. The paper uses 112x112 aligned faces.
      embedding_dim: size of the face embedding (the paper: 512).
      head: "fc" (the literal Table I Flatten -> FC), "gdc" (global depthwise conv, as in
        MobileFaceNet) or "gap" (global average pooling -> FC).
      name: model name; layer names do not depend on it.

    Returns:
      A keras.Model mapping [N, H, W, 3] raw pixels to an un-normalised [N, embedding_dim] embedding.
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = normalize(inputs)
    x = conv_bn(x, STEM_CHANNELS, 3, 2, "stem")
    x = conv_bn(x, STEM_CHANNELS, 3, 1, "stem_dw", depthwise=True)
    for stage, (expand, out, rblocks) in enumerate(TABLE_I, start=1):
        x = bottleneck(x, expand, out, 2, f"stage{stage}_block0")  # Block /2
        for i in range(1, rblocks + 1):
            x = bottleneck(x, expand, out, 1, f"stage{stage}_block{i}")  # RBlock
    x = conv_bn(x, HEAD_CHANNELS, 1, 1, "head")
    outputs = embedding_head(x, head, embedding_dim)
    return keras.Model(inputs, outputs, name=name)
