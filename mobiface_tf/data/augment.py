"""Face-preserving augmentations as TensorFlow ops for tf.data, deterministic given a seed.

Per image (inside the parallel decode map, on float32 [H, W, 3] in 0..255), in this order:
  flip -> scale + shift jitter -> down-up scaling -> blur -> colour jitter -> greyscale -> cutout
Per batch (after batching, on float32 [B, H, W, 3]):
  mixup (Zhang et al., 2018) or CutMix (Yun et al., 2019) between faces of the batch.

Every random draw is a stateless op (tf.random.stateless_*) keyed by an explicit int32/int64 [2] seed, split
into one sub-seed per augmentation, so the same seed gives the same pixels eagerly and inside tf.data, and a
batch can be reproduced from its seeds. Each augmentation is the identity at zero strength (or probability).

The strengths are small on purpose: the faces are aligned to a template, and a distillation target is only
useful when the face stays recognisable (Beyer et al., CVPR 2022, "Knowledge distillation: A good teacher is
patient and consistent", mix faces and augment aggressively only because the teacher embeds the same view).
"""
from __future__ import annotations

import dataclasses
import math

import tensorflow as tf

_NUM_SEEDS = 16  # sub-seeds split from each image's seed (one per random draw below)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Strengths of each augmentation; 0 turns one off. Probabilities are per image.

    flip: mirror left-right with probability 1/2.
    scale: zoom factor drawn from U(1 - scale, 1 + scale) about the centre.
    shift: translation drawn from U(-shift, shift) * side, in x and y independently.
    downup: probability of scaling the face down to a side drawn from U(downup_min, side) px and back up
      (bilinear; low-resolution faces like celeba_small's).
    blur: probability of a Gaussian blur with sigma drawn from U(0.3, blur_sigma) px.
    brightness, contrast, saturation: factors drawn from U(1 - s, 1 + s) (multiplicative brightness; contrast
      and saturation about the image's grey mean / each pixel's grey value).
    grey: probability of replacing the image by its luma (ITU-R BT.601) in all three channels.
    cutout: probability of filling one rectangle (sides U(0.1, cutout_size) * side) with a random grey level.
    mixup, cutmix: per-image probabilities of mixing with another face of the batch (mixup + cutmix <= 1);
      mixup's weight lambda ~ Beta(mixup_alpha, mixup_alpha), folded to lambda >= 1/2 so the image keeps most
      of its own face. CutMix pastes a box of area (1 - lambda) of the partner's face at a random place.
    """
    flip: bool = True
    scale: float = 0.05
    shift: float = 0.04
    downup: float = 0.1
    downup_min: int = 32
    blur: float = 0.1
    blur_sigma: float = 1.5
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    grey: float = 0.1
    cutout: float = 0.1
    cutout_size: float = 0.4
    mixup: float = 0.0
    mixup_alpha: float = 0.4
    cutmix: float = 0.0

    def __post_init__(self):
        limits = dict(scale=1, shift=1, brightness=1, contrast=1, saturation=1, cutout_size=1, blur_sigma=10,
                      mixup_alpha=10)
        for name, top in limits.items():
            v = getattr(self, name)
            if not (math.isfinite(v) and 0 <= v < top):
                raise ValueError(f"augmentation strength {name}={v} is out of range: 0 <= {name} < {top}")
        for name in ("downup", "blur", "grey", "cutout", "mixup", "cutmix"):
            v = getattr(self, name)
            if not (math.isfinite(v) and 0 <= v <= 1):
                raise ValueError(f"augmentation probability {name}={v} must be in [0, 1]")
        if self.mixup + self.cutmix > 1:
            raise ValueError(f"mixup ({self.mixup}) + cutmix ({self.cutmix}) must be <= 1: they are per-image "
                             "probabilities of two exclusive choices")
        if self.mixup > 0 and self.mixup_alpha <= 0:
            raise ValueError("mixup needs mixup_alpha > 0 (lambda ~ Beta(alpha, alpha))")
        if self.downup and self.downup_min < 4:
            raise ValueError(f"downup_min={self.downup_min} px is too small; use at least 4")

    @classmethod
    def none(cls) -> "AugmentConfig":
        """Every augmentation off (the identity)."""
        return cls(flip=False, scale=0, shift=0, downup=0, blur=0, brightness=0, contrast=0, saturation=0,
                   grey=0, cutout=0, mixup=0, cutmix=0)

    @property
    def mixes(self) -> bool:
        """True when faces are mixed across the batch (a batch-level step follows the per-image one)."""
        return self.mixup > 0 or self.cutmix > 0


# ----------------------------------------------------------------------------------------------- helpers
def _u(seed, lo=0.0, hi=1.0, shape=()):
    return tf.random.stateless_uniform(shape, seed=seed, minval=lo, maxval=hi, dtype=tf.float32)


def _luma(image):
    """[..., 3] RGB -> [..., 1] BT.601 luma (as tf.image.rgb_to_grayscale)."""
    return tf.reduce_sum(image * tf.constant([0.2989, 0.587, 0.114], tf.float32), axis=-1, keepdims=True)


def split_seed(seed, num: int = _NUM_SEEDS):
    """[2] seed -> [num, 2] independent sub-seeds (tf.random.experimental.stateless_split)."""
    return tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=num)


# ----------------------------------------------------------------------------------------------- per image
def flip(image, seed, apply: bool = True):
    """Mirror [H, W, 3] left-right with probability 1/2 (identity when apply is False)."""
    if not apply:
        return image
    return tf.image.stateless_random_flip_left_right(image, seed=seed)


def scale_shift(image, seed, scale: float, shift: float):
    """Zoom by U(1-scale, 1+scale) about the centre and translate by U(-shift, shift) * side (bilinear; edge
    pixels repeated). At scale = shift = 0 the transform is the identity."""
    h, w = image.shape[0], image.shape[1]
    s = _u(seed[0], 1.0 - scale, 1.0 + scale)
    t = _u(seed[1], -shift, shift, [2]) * tf.constant([w, h], tf.float32)
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    # Output pixel (x, y) samples input ((x - cx) / s + cx - tx, (y - cy) / s + cy - ty).
    inv = 1.0 / s
    transform = tf.stack([inv, 0.0, cx - cx * inv - t[0], 0.0, inv, cy - cy * inv - t[1], 0.0, 0.0])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform[None], output_shape=tf.constant([h, w], tf.int32),
        fill_value=0.0, interpolation="BILINEAR", fill_mode="NEAREST")
    return out[0]


def down_up(image, seed, prob: float, min_side: int):
    """With probability `prob`, resize [H, W, 3] down to a side drawn from U(min_side, H) (antialiased) and
    back up to H x W (bilinear)."""
    if prob <= 0:
        return image
    h, w = image.shape[0], image.shape[1]
    side = tf.cast(tf.floor(_u(seed[1], float(min_side), float(h))), tf.int32)

    def resample():
        small = tf.image.resize(image, tf.stack([side, side * w // h]), antialias=True)
        return tf.image.resize(small, [h, w], method="bilinear")

    return tf.cond(_u(seed[0]) < prob, resample, lambda: image)


def gaussian_blur(image, sigma, radius: int):
    """[H, W, 3] blurred by a separable Gaussian of std `sigma` px (scalar tensor; ~0 is the identity) with
    taps -radius..radius and reflected borders."""
    x = tf.range(-radius, radius + 1, dtype=tf.float32)
    k = tf.exp(-tf.square(x) / (2.0 * tf.square(tf.maximum(sigma, 1e-3))))
    k = k / tf.reduce_sum(k)
    padded = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    kx = tf.tile(tf.reshape(k, [1, -1, 1, 1]), [1, 1, 3, 1])
    ky = tf.tile(tf.reshape(k, [-1, 1, 1, 1]), [1, 1, 3, 1])
    out = tf.nn.depthwise_conv2d(padded, kx, [1, 1, 1, 1], "VALID")
    out = tf.nn.depthwise_conv2d(out, ky, [1, 1, 1, 1], "VALID")
    return out[0]


def random_blur(image, seed, prob: float, max_sigma: float):
    """With probability `prob`, a Gaussian blur of sigma ~ U(0.3, max_sigma) px."""
    if prob <= 0 or max_sigma <= 0:
        return image
    sigma = _u(seed[1], min(0.3, max_sigma), max_sigma)
    radius = max(1, int(math.ceil(2 * max_sigma)))
    return tf.cond(_u(seed[0]) < prob, lambda: gaussian_blur(image, sigma, radius), lambda: image)


def colour_jitter(image, seed, brightness: float, contrast: float, saturation: float):
    """Brightness, contrast and saturation factors from U(1 - s, 1 + s); the identity at s = 0 (up to float
    rounding of (x - m) + m)."""
    if brightness:
        image = image * _u(seed[0], 1 - brightness, 1 + brightness)
    if contrast:
        m = tf.reduce_mean(_luma(image))
        image = (image - m) * _u(seed[1], 1 - contrast, 1 + contrast) + m
    if saturation:
        g = _luma(image)
        image = (image - g) * _u(seed[2], 1 - saturation, 1 + saturation) + g
    return image


def random_grey(image, seed, prob: float):
    """With probability `prob`, the image's luma in all three channels."""
    if prob <= 0:
        return image
    return tf.where(_u(seed) < prob, tf.tile(_luma(image), [1, 1, 3]), image)


def random_cutout(image, seed, prob: float, max_size: float):
    """With probability `prob`, one rectangle with sides U(0.1, max_size) * side, centred uniformly (clipped
    at the border), filled with a grey level drawn from U(0, 255)."""
    if prob <= 0 or max_size <= 0:
        return image
    h, w = image.shape[0], image.shape[1]
    size = _u(seed[1], min(0.1, max_size), max_size, [2]) * tf.constant([h, w], tf.float32)
    centre = _u(seed[2], 0.0, 1.0, [2]) * tf.constant([h, w], tf.float32)
    inside = _box_mask(h, w, centre - size / 2, centre + size / 2)
    level = _u(seed[3], 0.0, 255.0)
    keep = tf.logical_or(_u(seed[0]) >= prob, tf.logical_not(inside))
    return tf.where(keep[..., None], image, level)


def _box_mask(h: int, w: int, lo, hi):
    """bool [h, w]: pixel centres inside [lo, hi) (y, x float tensors [2])."""
    yy = tf.range(h, dtype=tf.float32)[:, None] + 0.5
    xx = tf.range(w, dtype=tf.float32)[None, :] + 0.5
    return (yy >= lo[0]) & (yy < hi[0]) & (xx >= lo[1]) & (xx < hi[1])


def augment_image(image, seed, cfg: AugmentConfig):
    """One face float32 [H, W, 3] in 0..255 -> augmented float32 [H, W, 3] clipped to 0..255.

    `seed` is an int32/int64 [2] tensor; the result is a pure function of (image, seed, cfg).
    """
    image = tf.cast(image, tf.float32)
    s = split_seed(seed)
    image = flip(image, s[0], cfg.flip)
    if cfg.scale or cfg.shift:
        image = scale_shift(image, s[1:3], cfg.scale, cfg.shift)
    image = down_up(image, s[3:5], cfg.downup, cfg.downup_min)
    image = random_blur(image, s[5:7], cfg.blur, cfg.blur_sigma)
    image = colour_jitter(image, s[7:10], cfg.brightness, cfg.contrast, cfg.saturation)
    image = random_grey(image, s[10], cfg.grey)
    image = random_cutout(image, s[11:15], cfg.cutout, cfg.cutout_size)
    return tf.clip_by_value(image, 0.0, 255.0)


# ----------------------------------------------------------------------------------------------- per batch
def mix_batch(images, seed, cfg: AugmentConfig):
    """Mixup or CutMix between the faces of one batch.

    Args:
      images: float32 [B, H, W, 3].
      seed: int32/int64 [2].
      cfg: uses mixup, mixup_alpha, cutmix.
    Returns:
      (mixed float32 [B, H, W, 3], lam float32 [B], partner int32 [B]): image i is mixed with image partner[i]
      (partner[i] != i for B > 1; the batch rolled by a random offset). For mixup,
      mixed[i] = lam[i] * images[i] + (1 - lam[i]) * images[partner[i]]; for CutMix, lam[i] is the share of
      image i's own pixels left outside the pasted box. Images that are not mixed have lam = 1 and are unchanged.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    b = tf.shape(images)[0]
    h, w = images.shape[1], images.shape[2]
    s = split_seed(seed, 8)
    offset = tf.random.stateless_uniform([], s[0], minval=1, maxval=tf.maximum(b, 2), dtype=tf.int32)
    partner = tf.math.floormod(tf.range(b) + offset, b)
    other = tf.gather(images, partner)
    choice = _u(s[1], shape=[b])
    alpha = max(cfg.mixup_alpha, 1e-3)
    g1 = tf.random.stateless_gamma([b], s[2], alpha=alpha)
    g2 = tf.random.stateless_gamma([b], s[3], alpha=alpha)
    lam = g1 / tf.maximum(g1 + g2, 1e-12)
    lam = tf.maximum(lam, 1.0 - lam)  # the image keeps most of its own face
    do_mix = choice < cfg.mixup
    do_cut = (choice >= cfg.mixup) & (choice < cfg.mixup + cfg.cutmix)
    # Mixup: a convex combination of the two images.
    lam_mix = tf.where(do_mix, lam, 1.0)
    mixed = lam_mix[:, None, None, None] * images + (1.0 - lam_mix[:, None, None, None]) * other
    # CutMix: a box of area ~(1 - lam) from the partner, centred uniformly and clipped at the border.
    side = tf.sqrt(1.0 - lam)[:, None] * tf.constant([h, w], tf.float32)
    centre = _u(s[4], shape=[b, 2]) * tf.constant([h, w], tf.float32)
    lo, hi = centre - side / 2, centre + side / 2
    yy = tf.range(h, dtype=tf.float32)[None, :, None] + 0.5
    xx = tf.range(w, dtype=tf.float32)[None, None, :] + 0.5
    box = ((yy >= lo[:, 0, None, None]) & (yy < hi[:, 0, None, None]) &
           (xx >= lo[:, 1, None, None]) & (xx < hi[:, 1, None, None]) & do_cut[:, None, None])
    mixed = tf.where(box[..., None], other, mixed)
    cut_share = tf.reduce_mean(tf.cast(box, tf.float32), axis=[1, 2])
    lam_out = tf.where(do_cut, 1.0 - cut_share, lam_mix)
    return mixed, lam_out, partner
