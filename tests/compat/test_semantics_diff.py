"""Silent differences from Keras, each run through real Keras 3 and compat and compared."""

from __future__ import annotations

import numpy as np
import pytest


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


def _mlp(K):
    return K.Sequential(
        [
            K.Input((5,)),
            K.layers.Dense(8, activation="tanh", name="h"),
            K.layers.Dense(3, name="out"),
        ]
    )


def _regression(seed: int = 2):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(12, 5)).astype("float32"), rng.normal(size=(12, 3)).astype("float32")


OPTIMIZERS = [
    ("SGD", {}),
    ("SGD", {"learning_rate": 0.05, "momentum": 0.9}),
    ("SGD", {"learning_rate": 0.05, "momentum": 0.9, "nesterov": True}),
    ("Adam", {}),
    ("Adam", {"learning_rate": 0.01, "amsgrad": True, "weight_decay": 0.1}),
    ("AdamW", {"learning_rate": 0.01}),
    ("RMSprop", {}),
    ("RMSprop", {"learning_rate": 0.01, "momentum": 0.5, "centered": True}),
    ("Adagrad", {"learning_rate": 0.05}),
    ("Adamax", {"learning_rate": 0.01}),
    ("Nadam", {"learning_rate": 0.01}),
    ("SGD", {"learning_rate": 0.1, "clipnorm": 0.1}),
    ("Adam", {"learning_rate": 0.01, "global_clipnorm": 0.1}),
    ("SGD", {"learning_rate": 0.1, "clipvalue": 0.01}),
]


def _train(K, name, kwargs, x, y, source=None, epochs=3, callbacks=None):
    model = _mlp(K)
    if source is not None:
        model.set_weights(source.get_weights())
    model.compile(optimizer=getattr(K.optimizers, name)(**kwargs), loss="mse")
    model.fit(
        x, y, batch_size=4, epochs=epochs, shuffle=False, verbose=0, callbacks=callbacks or []
    )
    return model


@pytest.mark.parametrize(("name", "kwargs"), OPTIMIZERS, ids=lambda v: str(v))
def test_optimizer_updates_match_keras(keras, ck, name, kwargs):
    x, y = _regression()
    start = _mlp(keras)
    k_model = _train(keras, name, kwargs, x, y, source=start)
    c_model = _train(ck, name, kwargs, x, y, source=start)
    for kw, cw in zip(k_model.get_weights(), c_model.get_weights(), strict=True):
        np.testing.assert_allclose(cw, kw, atol=1e-6)
    assert int(c_model.optimizer.iterations) == int(k_model.optimizer.iterations) == 9


def test_optimizer_defaults_match_keras(keras, ck):
    for name in ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adamax", "Nadam"):
        k_cfg = getattr(keras.optimizers, name)().get_config()
        c_opt = getattr(ck.optimizers, name)()
        for key, value in k_cfg.items():
            if key in ("name", "learning_rate"):
                continue
            assert getattr(c_opt, key) == value, (name, key)
        assert float(c_opt.learning_rate) == pytest.approx(k_cfg["learning_rate"])


SCHEDULES = [
    ("ExponentialDecay", (0.1, 2, 0.5), {}),
    ("ExponentialDecay", (0.1, 2, 0.5), {"staircase": True}),
    ("PiecewiseConstantDecay", ([2, 5], [0.1, 0.05, 0.01]), {}),
    ("PolynomialDecay", (0.1, 6), {"end_learning_rate": 0.01, "power": 2.0}),
    ("InverseTimeDecay", (0.1, 3, 0.5), {}),
    ("CosineDecay", (0.1, 7), {"alpha": 0.1}),
    ("CosineDecay", (0.0, 5), {"warmup_target": 0.1, "warmup_steps": 3}),
]


@pytest.mark.parametrize(("name", "args", "kwargs"), SCHEDULES, ids=lambda v: str(v))
def test_learning_rate_schedules_match_keras(keras, ck, name, args, kwargs):
    k_sched = getattr(keras.optimizers.schedules, name)(*args, **kwargs)
    c_sched = getattr(ck.optimizers.schedules, name)(*args, **kwargs)
    for step in range(12):
        assert c_sched(step) == pytest.approx(float(_np(keras, k_sched(step))), rel=1e-6)
    x, y = _regression()
    start = _mlp(keras)
    k_model = _train(keras, "SGD", {"learning_rate": k_sched, "momentum": 0.5}, x, y, start)
    c_model = _train(ck, "SGD", {"learning_rate": c_sched, "momentum": 0.5}, x, y, start)
    for kw, cw in zip(k_model.get_weights(), c_model.get_weights(), strict=True):
        np.testing.assert_allclose(cw, kw, atol=1e-6)
    assert float(c_model.optimizer.learning_rate) == pytest.approx(
        float(_np(keras, k_model.optimizer.learning_rate)), rel=1e-6
    )


def test_learning_rate_is_a_variable(keras, ck):
    for K in (keras, ck):
        opt = K.optimizers.Adam(learning_rate=0.01)
        assert float(np.asarray(opt.learning_rate.numpy())) == pytest.approx(0.01)
        opt.learning_rate.assign(0.5)
        assert float(opt.learning_rate) == 0.5
        opt.learning_rate = 0.25
        assert float(opt.learning_rate.numpy()) == 0.25
        with pytest.raises(TypeError, match="not settable"):
            K.optimizers.SGD(K.optimizers.schedules.ExponentialDecay(0.1, 2, 0.5)).learning_rate = 1


def test_learning_rate_assigned_between_fits_matches_keras(keras, ck):
    x, y = _regression()
    start = _mlp(keras)
    models = []
    for K in (keras, ck):
        model = _train(K, "Adam", {"learning_rate": 0.01}, x, y, start, epochs=1)
        model.optimizer.learning_rate = 0.1
        model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
        model.optimizer.learning_rate.assign(0.001)
        model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
        models.append(model)
    for kw, cw in zip(models[0].get_weights(), models[1].get_weights(), strict=True):
        np.testing.assert_allclose(cw, kw, atol=1e-6)


def _augmenters(K):
    return {
        "flip": K.layers.RandomFlip("horizontal"),
        "rotation": K.layers.RandomRotation(0.2),
        "zoom": K.layers.RandomZoom(-0.4),
    }


@pytest.mark.parametrize("kind", ["flip", "rotation", "zoom"])
def test_augmentation_called_directly_augments_like_keras(keras, ck, kind):
    x = np.random.default_rng(3).uniform(0, 255, (16, 12, 12, 3)).astype("float32")
    for K, to_np in ((keras, lambda t: _np(keras, t)), (ck, lambda t: np.asarray(t.detach()))):
        layer = _augmenters(K)[kind]
        out = to_np(layer(x))
        assert out.shape == x.shape
        assert not np.allclose(out, x), (K.__name__, "direct call must augment")
        np.testing.assert_array_equal(to_np(layer(x, training=False)), x)
        inputs = K.Input((12, 12, 3))
        model = K.Model(inputs, _augmenters(K)[kind](inputs))
        assert not np.allclose(to_np(model(x)), x), (K.__name__, "model call must augment")
        np.testing.assert_array_equal(model.predict(x, verbose=0), x)
        if kind == "flip":  # each image is itself or its mirror, both flips happen
            same = [np.array_equal(o, i) for o, i in zip(out, x, strict=True)]
            flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, x, strict=True)]
            assert all(a or b for a, b in zip(same, flipped, strict=True)) and any(flipped)


def _two_dense(K):
    inputs = K.Input((4,))
    h = K.layers.Dense(3, name="a")(inputs)
    return K.Model(inputs, K.layers.Dense(1, name="b")(h))


def _trainable_story(K, start):
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(8, 4)).astype("float32"), np.ones((8, 1), "float32")
    out = {}
    model = _two_dense(K)
    model.set_weights(start.get_weights())
    model.compile(optimizer=K.optimizers.SGD(0.1), loss="mse")
    model.get_layer("a").trainable = False  # frozen after compile
    out["n_trainable"] = len(model.trainable_weights)
    a0 = model.get_layer("a").get_weights()[0].copy()
    model.fit(x, y, batch_size=4, verbose=0, shuffle=False)
    out["frozen_a_changed"] = not np.array_equal(a0, model.get_layer("a").get_weights()[0])
    model.get_layer("a").trainable = True  # unfrozen after the optimizer was built
    try:
        model.fit(x, y, batch_size=4, verbose=0, shuffle=False)
        out["unfreeze_after_fit"] = "trained"
    except ValueError as err:
        out["unfreeze_after_fit"] = "Unknown variable" in str(err)
    model = _two_dense(K)
    model.set_weights(start.get_weights())
    model.get_layer("a").trainable = False
    model.compile(optimizer=K.optimizers.SGD(0.1), loss="mse")
    model.get_layer("a").trainable = True  # unfrozen after compile, before any fit
    model.fit(x, y, batch_size=4, verbose=0, shuffle=False)
    out["weights"] = model.get_weights()
    return out


def test_trainable_changed_after_compile_behaves_like_keras(keras, ck):
    start = _two_dense(keras)
    k, c = _trainable_story(keras, start), _trainable_story(ck, start)
    assert c["n_trainable"] == k["n_trainable"] == 2
    assert c["frozen_a_changed"] is k["frozen_a_changed"] is False
    assert c["unfreeze_after_fit"] is k["unfreeze_after_fit"] is True
    for kw, cw in zip(k["weights"], c["weights"], strict=True):
        np.testing.assert_allclose(cw, kw, atol=1e-6)


def test_integer_inputs_are_cast_like_keras(keras, ck):
    x = np.random.default_rng(5).integers(0, 256, (6, 8, 8, 3)).astype("uint8")
    y = np.eye(2, dtype="float32")[np.arange(6) % 2]
    outs = []
    for K in (keras, ck):
        inputs = K.Input((8, 8, 3))
        h = K.layers.Conv2D(2, 3, name="conv")(inputs)
        h = K.layers.GlobalAveragePooling2D()(h)
        model = K.Model(inputs, K.layers.Dense(2, activation="softmax", name="out")(h))
        if outs:
            model.set_weights(outs[0][0].get_weights())
        model.compile(optimizer=K.optimizers.SGD(1e-4), loss="categorical_crossentropy")
        before = model.predict(x, verbose=0)
        model.fit(x, y, batch_size=3, verbose=0, shuffle=False)
        outs.append((model, before, model.predict(x, verbose=0)))
    (_, kb, ka), (_, cb, ca) = outs
    assert cb.dtype == kb.dtype == np.float32
    np.testing.assert_allclose(cb, kb, atol=1e-5)
    np.testing.assert_allclose(ca, ka, atol=1e-5)
