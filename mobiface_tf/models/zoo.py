"""Named network configurations compared throughout the project (bench, README tables).

One place defines what "mobiface_gdc" or "mobilenet_v1_fc" means, so every table agrees.
"""
from mobiface_tf.models import BUILDERS, build, count_macs

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


def resolve(name, head=None, embedding_dim=None):
    """The one network-name resolver every CLI uses (train, to_tflite, bench, compare).

    Args:
      name: a zoo name (CONFIGS, e.g. "mobiface_gdc") or a builder name (models.BUILDERS, e.g. "mobiface").
      head: "fc" | "gdc" | "gap" or None (the zoo entry's head, else the builder's default). A zoo name
        fixes its head: a different one is an error, not silently replaced.
      embedding_dim: overrides the zoo entry's embedding size when given (None: the entry's, else the
        builder's default).
    Returns (builder name, builder kwargs), for `models.build(builder, **kwargs)`.
    Raises ValueError naming the value and the accepted names.
    """
    if name in CONFIGS:
        builder, kwargs = CONFIGS[name]
        kwargs = dict(kwargs)
        if head is not None and head != kwargs.get("head", head):
            raise ValueError(f"network {name!r} has head {kwargs['head']!r}, not {head!r}; drop the head setting "
                             f"or use the builder name {builder!r} with it")
    elif name in BUILDERS:
        builder, kwargs = name, {}
    else:
        raise ValueError(f"unknown network {name!r}; expected a zoo name ({', '.join(sorted(CONFIGS))}) or a "
                         f"builder name ({', '.join(sorted(BUILDERS))})")
    if head is not None:
        kwargs["head"] = head
    if embedding_dim is not None:
        kwargs["embedding_dim"] = int(embedding_dim)
    return builder, kwargs


def build_config(short_name, **overrides):
    """Build a network by zoo or builder name (see `resolve`); the model is named after `short_name`."""
    builder, kwargs = resolve(short_name, **overrides)
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
