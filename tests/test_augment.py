"""Face-preserving augmentations: shapes and ranges, identity at zero strength, seeded determinism, mixup/CutMix."""
import numpy as np
import pytest
import tensorflow as tf

from mobiface_tf.data import augment as A
from mobiface_tf.data.augment import AugmentConfig, augment_image, mix_batch
from mobiface_tf.data.pipeline import make_dataset
from mobiface_tf.data.synthetic import write_synthetic_tfrecords

STRONG = AugmentConfig(scale=0.2, shift=0.1, downup=1.0, blur=1.0, brightness=0.5, contrast=0.5, saturation=0.5,
                       grey=0.5, cutout=1.0, cutout_size=0.5)


def _face(seed=0, size=112):
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, (14, 14, 3)).astype(np.float32)
    return tf.image.resize(small, [size, size]).numpy()  # smooth, like a face crop


def test_shapes_ranges_and_seeded_determinism():
    img = _face()
    a = augment_image(img, tf.constant([1, 2], tf.int64), STRONG).numpy()
    b = augment_image(img, tf.constant([1, 2], tf.int64), STRONG).numpy()
    c = augment_image(img, tf.constant([1, 3], tf.int64), STRONG).numpy()
    assert a.shape == (112, 112, 3) and a.dtype == np.float32
    assert a.min() >= 0 and a.max() <= 255
    np.testing.assert_array_equal(a, b)  # the same seed, the same computation
    assert np.abs(a - c).mean() > 1.0  # another seed, another view
    assert np.abs(a - img).mean() > 1.0
    # The same op inside tf.data gives the same pixels as eagerly.
    ds = tf.data.Dataset.from_tensors((img, tf.constant([1, 2], tf.int64)))
    ds = ds.map(lambda x, s: augment_image(x, s, STRONG))
    np.testing.assert_allclose(next(iter(ds)).numpy(), a, atol=1e-3)


def test_each_augmentation_is_the_identity_at_zero_strength():
    img = tf.constant(_face(1))
    s = A.split_seed(tf.constant([5, 6]))
    ops = {
        "scale_shift": A.scale_shift(img, s[0:2], 0.0, 0.0),
        "down_up": A.down_up(img, s[0:2], 0.0, 32),
        "blur": A.gaussian_blur(img, tf.constant(0.0), 3),
        "colour": A.colour_jitter(img, s[0:3], 0.0, 0.0, 0.0),
        "grey": A.random_grey(img, s[0], 0.0),
        "cutout": A.random_cutout(img, s[0:4], 0.0, 0.4),
        "flip_off": A.flip(img, s[0], False),
        "all_off": augment_image(img, tf.constant([5, 6]), AugmentConfig.none()),
    }
    for name, out in ops.items():
        np.testing.assert_allclose(out.numpy(), img.numpy(), atol=1e-3, err_msg=name)
    # ... and each is not the identity when on (so the check above can tell).
    assert np.abs(A.scale_shift(img, s[0:2], 0.2, 0.1).numpy() - img.numpy()).mean() > 1
    assert np.abs(A.gaussian_blur(img, tf.constant(2.0), 3).numpy() - img.numpy()).mean() > 0.5
    grey = A.random_grey(img, s[0], 1.0).numpy()
    np.testing.assert_allclose(grey[..., 0], grey[..., 2], atol=1e-4)


def test_scale_shift_moves_the_face_by_the_drawn_amount():
    # A bright dot at the centre moves by the drawn shift (no zoom): the transform's sign and units are right.
    img = np.zeros((112, 112, 3), np.float32)
    img[50:62, 50:62] = 255
    seed = A.split_seed(tf.constant([9, 9]))[0:2]
    out = A.scale_shift(tf.constant(img), seed, 0.0, 0.1).numpy()
    t = A._u(seed[1], -0.1, 0.1, [2]).numpy() * 112  # the same draw as scale_shift's
    ys, xs = np.nonzero(out[..., 0] > 127)
    assert abs(xs.mean() - (55.5 + t[0])) < 1.0 and abs(ys.mean() - (55.5 + t[1])) < 1.0


def test_mixup_is_lambda_a_plus_one_minus_lambda_b():
    imgs = np.stack([_face(i) for i in range(8)])
    mixed, lam, partner = mix_batch(imgs, tf.constant([3, 4]), AugmentConfig(mixup=1.0, mixup_alpha=0.4))
    mixed, lam, partner = mixed.numpy(), lam.numpy(), partner.numpy()
    assert np.all(partner != np.arange(8)) and sorted(partner) == list(range(8))
    assert np.all((lam >= 0.5) & (lam <= 1.0)) and lam.min() < 0.95
    expected = lam[:, None, None, None] * imgs + (1 - lam[:, None, None, None]) * imgs[partner]
    np.testing.assert_allclose(mixed, expected, atol=1e-3)
    # Off: unchanged, lam = 1.
    same, lam0, _ = mix_batch(imgs, tf.constant([3, 4]), AugmentConfig(mixup=0.0))
    np.testing.assert_array_equal(same.numpy(), imgs)
    np.testing.assert_array_equal(lam0.numpy(), np.ones(8, np.float32))


def test_cutmix_pastes_a_box_of_the_partner_and_lambda_is_the_own_share():
    imgs = np.stack([np.full((112, 112, 3), 10.0 * (i + 1), np.float32) for i in range(6)])
    mixed, lam, partner = mix_batch(imgs, tf.constant([7, 1]), AugmentConfig(cutmix=1.0, mixup_alpha=1.0))
    mixed, lam, partner = mixed.numpy(), lam.numpy(), partner.numpy()
    for i in range(6):
        own = np.isclose(mixed[i, ..., 0], imgs[i, 0, 0, 0])
        other = np.isclose(mixed[i, ..., 0], imgs[partner[i], 0, 0, 0])
        assert np.all(own | other)
        assert abs(own.mean() - lam[i]) < 1e-6
    assert lam.min() < 1.0


def test_bad_strengths_are_refused():
    for bad in (dict(scale=1.5), dict(grey=-0.1), dict(mixup=0.7, cutmix=0.6), dict(blur_sigma=float("nan"))):
        with pytest.raises(ValueError):
            AugmentConfig(**bad)


def test_augmented_pipeline_is_reproducible_from_its_seed(tmp_path):
    write_synthetic_tfrecords(tmp_path, 4, 6, seed=2, shards=2)
    cfg = AugmentConfig(mixup=0.5, cutmix=0.3)

    def first(seed):
        ds = make_dataset(tmp_path, 8, training=True, seed=seed, deterministic=True, augment=cfg)
        return [x.numpy() for x in next(iter(ds))]

    a, b, c = first(11), first(11), first(12)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == (8, 112, 112, 3) and a[0].dtype == np.float32 and len(a) == 2
