"""Silent differences from Keras, each run through real Keras 3 and compat and compared."""

from __future__ import annotations

import numpy as np


def _np(keras, t):
    return np.asarray(keras.ops.convert_to_numpy(t))


def _copy_weights(src, dst) -> None:
    dst.set_weights(src.get_weights())


def _small_cnn(K):
    return K.Sequential(
        [
            K.Input((6, 6, 3)),
            K.layers.Conv2D(4, 3, name="conv"),
            K.layers.BatchNormalization(name="bn"),
            K.layers.Activation("relu"),
            K.layers.Flatten(),
            K.layers.Dense(2, name="out"),
        ]
    )


def test_batchnorm_moving_variance_is_keras_biased_update(keras, ck):
    rng = np.random.default_rng(0)
    batches = [rng.normal(1.0, 2.0, (4, 5, 5, 3)).astype("float32") for _ in range(5)]
    k_bn, c_bn = keras.layers.BatchNormalization(), ck.layers.BatchNormalization()
    k_bn.build((None, 5, 5, 3))
    c_bn(batches[0][:1])  # builds
    for b in batches:
        k_out = _np(keras, k_bn(b, training=True))
        c_out = np.asarray(c_bn(b, training=True).detach())
        np.testing.assert_allclose(c_out, k_out, atol=1e-5)
    for kv, cv in zip(k_bn.get_weights(), c_bn.get_weights(), strict=True):
        np.testing.assert_allclose(cv, kv, atol=1e-6)
    test = rng.normal(size=(2, 5, 5, 3)).astype("float32")
    np.testing.assert_allclose(
        np.asarray(c_bn(test, training=False).detach()), _np(keras, k_bn(test)), atol=1e-6
    )


def test_batchnorm_in_fit_matches_keras(keras, ck):
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (12, 6, 6, 3)).astype("float32")
    y = rng.normal(size=(12, 2)).astype("float32")
    k_model, c_model = _small_cnn(keras), _small_cnn(ck)
    _copy_weights(k_model, c_model)
    for m, K in ((k_model, keras), (c_model, ck)):
        m.compile(optimizer=K.optimizers.SGD(0.01), loss="mse")
        m.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
    k_bn, c_bn = k_model.get_layer("bn").get_weights(), c_model.get_layer("bn").get_weights()
    for kv, cv in zip(k_bn, c_bn, strict=True):
        np.testing.assert_allclose(cv, kv, atol=1e-6)
    np.testing.assert_allclose(
        c_model.predict(x, verbose=0), k_model.predict(x, verbose=0), atol=1e-5
    )
