"""The three networks. `build(name, **kwargs)` looks the builder up in a plain dict."""
from mobiface_tf.models.macs import count_macs
from mobiface_tf.models.mobiface import MobiFace
from mobiface_tf.models.mobilefacenet import MobileFaceNet
from mobiface_tf.models.mobilenet_v1 import MobileNetV1

BUILDERS = {
    "mobiface": MobiFace,
    "mobilefacenet": MobileFaceNet,
    "mobilenet_v1": MobileNetV1,
}


def build(backbone, **kwargs):
    """Build a network by name, e.g. build("mobiface", head="gdc", embedding_dim=512)."""
    if backbone not in BUILDERS:
        raise ValueError(f"unknown backbone {backbone!r}; expected one of {sorted(BUILDERS)}")
    return BUILDERS[backbone](**kwargs)


__all__ = ["BUILDERS", "build", "count_macs", "MobiFace", "MobileFaceNet", "MobileNetV1"]
