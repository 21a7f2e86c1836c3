"""fuse_batchnorm: a MobiFace training step through TF's fused BN kernel equals Keras' own BN step (outputs,
every gradient, the moving statistics), and inference and the saved network are untouched."""
import numpy as np


def _pair():
    import keras

    from mobiface_tf.training.model import build_backbone

    keras.utils.set_random_seed(3)
    a = build_backbone("mobiface", 16, "gdc")
    b = build_backbone("mobiface", 16, "gdc")
    b.set_weights(a.get_weights())
    return a, b


def test_fused_training_step_equals_keras_batchnorm():
    import tensorflow as tf

    from mobiface_tf.training.fused_bn import fuse_batchnorm

    plain, fused = _pair()
    switched = fuse_batchnorm(fused)
    assert switched > 20 and fuse_batchnorm(fused) == 0  # every BN of the network, once
    x = tf.constant(np.random.default_rng(0).uniform(0, 255, (4, 112, 112, 3)).astype(np.float32))
    grads, outs = [], []
    for model in (plain, fused):
        with tf.GradientTape() as tape:
            y = model(x, training=True)
            loss = tf.reduce_sum(tf.square(y))
        grads.append(tape.gradient(loss, model.trainable_variables))
        outs.append(y.numpy())
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-3, atol=1e-4)
    largest = max(float(np.linalg.norm(g)) for g in grads[0])
    for g_fused, g_plain, v in zip(grads[1], grads[0], plain.trainable_variables):
        # relative L2 error per variable (float32 summation order differs: up to ~1 % on tiny BN gradients)
        err = float(np.linalg.norm(g_fused - g_plain))
        assert err <= 0.03 * float(np.linalg.norm(g_plain)) + 1e-4 * largest, (v.path, err)
    for w_fused, w_plain, v in zip(fused.non_trainable_weights, plain.non_trainable_weights,
                                   plain.non_trainable_weights):
        np.testing.assert_allclose(np.array(w_fused), np.array(w_plain), rtol=1e-4, atol=1e-5, err_msg=v.path)
    # inference is Keras' own code path, on the same (updated) statistics
    np.testing.assert_allclose(fused(x, training=False).numpy(), plain(x, training=False).numpy(),
                               rtol=1e-4, atol=1e-5)


def test_moving_variance_is_the_biased_batch_variance():
    """The kernel's Bessel-corrected variance is undone: with momentum 0 the moving variance after one training
    call equals the biased variance numpy computes over B*H*W."""
    import keras
    import tensorflow as tf

    from mobiface_tf.training.fused_bn import fuse_batchnorm

    inp = keras.Input((3, 3, 2))
    bn = keras.layers.BatchNormalization(momentum=0.0)
    model = keras.Model(inp, bn(inp))
    fuse_batchnorm(model)
    x = np.random.default_rng(1).normal(size=(2, 3, 3, 2)).astype(np.float32)
    model(tf.constant(x), training=True)
    np.testing.assert_allclose(np.array(bn.moving_variance), x.reshape(-1, 2).var(axis=0), rtol=1e-5)
    np.testing.assert_allclose(np.array(bn.moving_mean), x.reshape(-1, 2).mean(axis=0), rtol=1e-5, atol=1e-6)
