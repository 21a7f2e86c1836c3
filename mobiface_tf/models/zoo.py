"""Named network configurations compared throughout the project (bench, README tables).

One place defines what "mobiface_gdc" or "mobilenet_v1_fc" means, so every table agrees.
"""
from mobiface_tf.models import build, count_macs

#  short name           builder          kwargs
CONFIGS = {
    "mobiface_fc":        ("mobiface",      dict(head="fc", embedding_dim=512)),   # literal Table I
    "mobiface_gdc":       ("mobiface",      dict(head="gdc", embedding_dim=512)),
    "mobiface_gap":       ("mobiface",      dict(head="gap", embedding_dim=512)),
    "mobilefacenet":      ("mobilefacenet", dict(embedding_dim=128)),              # Chen et al.'s setting
    "mobilefacenet_512":  ("mobilefacenet", dict(embedding_dim=512)),              # same embedding as MobiFace
    "mobilenet_v1_gdc":   ("mobilenet_v1",  dict(head="gdc", embedding_dim=512)),
    "mobilenet_v1_fc":    ("mobilenet_v1",  dict(head="fc", embedding_dim=512)),
    "mobilenet_v1_fc_s1": ("mobilenet_v1",  dict(head="fc", embedding_dim=512, final_stride=1)),
}


def build_config(short_name):
    """Build one of CONFIGS by its short name."""
    if short_name not in CONFIGS:
        raise ValueError(f"unknown network {short_name!r}; expected one of {sorted(CONFIGS)}")
    builder, kwargs = CONFIGS[short_name]
    return build(builder, name=short_name, **kwargs)


def static_row(short_name):
    """Params, MACs and fp32 weight size of one configuration, without any timing.

    `params` counts every Keras weight, BN moving statistics included (as `model.count_params()`).
    `fp32_mb` is 4 bytes per parameter / 1e6: the float32 checkpoint size. An exported TFLite model is
    a little smaller because the converter folds BN into the convolutions.
    """
    model = build_config(short_name)
    params = model.count_params()
    return {
        "model": short_name,
        "params": params,
        "trainable_params": int(sum(w.numpy().size for w in model.trainable_weights)),
        "macs": count_macs(model),
        "fp32_mb": round(4 * params / 1e6, 2),
        "embedding_dim": int(model.output.shape[-1]),
    }
