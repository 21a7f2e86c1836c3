"""Building blocks shared by the three networks: input normalisation, conv-BN-act units,
the inverted-residual bottleneck (MobiFace Block/RBlock, MobileFaceNet bottleneck) and the
embedding heads.

Every layer is named from a prefix, so weights, TFLite graphs and tests can refer to it.
"""
import keras
from keras import layers

# The paper's pixel normalisation, (x - 127.5) / 128 (MobiFace §III-A, as in InsightFace).
# It is the first layer of every network, so saved and exported models take raw RGB 0-255.
PIXEL_MEAN = 127.5
PIXEL_SCALE = 1.0 / 128.0

# InsightFace initialises PReLU slopes at 0.25 (He et al., 2015). Keras' default is 0, i.e. ReLU at init.
PRELU_INIT = 0.25
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
HEADS = ("fc", "gdc", "gap")


def normalize(x, name="normalize"):
    """Raw RGB 0-255 -> (x - 127.5) / 128."""
    return layers.Rescaling(PIXEL_SCALE, offset=-PIXEL_MEAN * PIXEL_SCALE, name=name)(x)


def activation(x, kind, name):
    """Per-channel PReLU (shared_axes=[1, 2]: one slope per channel, not per element), ReLU, or None (linear)."""
    if kind is None:
        return x
    if kind == "prelu":
        return layers.PReLU(
            alpha_initializer=keras.initializers.Constant(PRELU_INIT), shared_axes=[1, 2], name=name
        )(x)
    if kind == "relu":
        return layers.ReLU(name=name)(x)
    raise ValueError(f"unknown activation {kind!r}; expected 'prelu', 'relu' or None")


def conv_bn(x, filters, kernel, stride, prefix, act="prelu", depthwise=False, padding="same"):
    """Conv (or depthwise conv) -> BN -> activation. Bias-free: the BN shift replaces it.

    padding: "same" (TensorFlow's SAME: for a stride-2 3x3 conv on an even map it pads 0 before and 1 after),
    "valid", or "symmetric": an explicit ZeroPadding2D of kernel//2 on every side, then "valid" (what
    MXNet / PyTorch / Caffe networks do, e.g. InsightFace's MobileFaceNet). For stride 1 and an odd kernel
    "symmetric" equals "same"; they differ only on strided layers.
    """
    if padding == "symmetric":
        if kernel != 1 and stride != 1:
            x = layers.ZeroPadding2D(kernel // 2, name=f"{prefix}_pad")(x)
            padding = "valid"
        else:
            padding = "same"
    if depthwise:
        x = layers.DepthwiseConv2D(kernel, stride, padding=padding, use_bias=False, name=f"{prefix}_conv")(x)
    else:
        x = layers.Conv2D(filters, kernel, stride, padding=padding, use_bias=False, name=f"{prefix}_conv")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"{prefix}_bn")(x)
    return activation(x, act, f"{prefix}_{act}") if act else x


def bottleneck(x, expand, out, stride, prefix, act="prelu", padding="same"):
    """Inverted residual: 1x1 expand -> 3x3 depthwise (stride) -> 1x1 linear projection.

    MobiFace's Block is this with stride 2 and no shortcut; its RBlock is stride 1 with an identity
    shortcut. The shortcut is added whenever the shapes allow it (stride 1, same channels), as in
    MobileNetV2 and MobileFaceNet.
    """
    in_channels = x.shape[-1]
    y = conv_bn(x, expand, 1, 1, f"{prefix}_expand", act)
    y = conv_bn(y, expand, 3, stride, f"{prefix}_dw", act, depthwise=True, padding=padding)
    y = conv_bn(y, out, 1, 1, f"{prefix}_project", act=None)  # "Linear": no activation
    if stride == 1 and in_channels == out:
        y = layers.Add(name=f"{prefix}_add")([x, y])
    return y


def embedding_head(x, head, embedding_dim, prefix="embedding"):
    """Map the final feature map (HxWxC) to an embedding, then BN on the embedding.

    - "fc":  Flatten -> Dense(embedding_dim), the literal MobiFace Table I head.
    - "gdc": global depthwise conv (kernel = the whole HxW map, linear) -> 1x1 linear conv, as in
             MobileFaceNet (Chen et al., 2018, §3.2). Far fewer parameters than "fc".
    - "gap": global average pooling -> Dense(embedding_dim).
    """
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; expected one of {HEADS}")
    if head == "fc":
        x = layers.Flatten(name=f"{prefix}_flatten")(x)
        x = layers.Dense(embedding_dim, use_bias=False, name=f"{prefix}_dense")(x)
    elif head == "gap":
        x = layers.GlobalAveragePooling2D(name=f"{prefix}_gap")(x)
        x = layers.Dense(embedding_dim, use_bias=False, name=f"{prefix}_dense")(x)
    else:
        kernel = (x.shape[1], x.shape[2])
        x = conv_bn(x, None, kernel, 1, f"{prefix}_gdc", act=None, depthwise=True, padding="valid")
        x = layers.Conv2D(embedding_dim, 1, use_bias=False, name=f"{prefix}_linear_conv")(x)
        x = layers.Flatten(name=f"{prefix}_flatten")(x)
    return layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=f"{prefix}_bn")(x)
