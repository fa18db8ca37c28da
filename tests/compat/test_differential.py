"""The issue's three recipes run through real Keras 3 and through compat, compared."""

from __future__ import annotations

import numpy as np
import pytest


def _trainable_count(model) -> tuple[int, int]:
    t = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    n = sum(int(np.prod(w.shape)) for w in model.non_trainable_weights)
    return t, n


def _tutorial(K, x, y, xv, yv, path):
    """VGG16 copied into a Sequential, pop() x3, layers[:15] frozen, new head (the tutorial)."""
    vgg = K.applications.VGG16(weights=None, include_top=True, input_shape=(32, 32, 3))
    model = K.Sequential()
    for layer in vgg.layers:
        model.add(layer)
    model.pop()
    model.pop()
    model.pop()
    for layer in model.layers[:15]:
        layer.trainable = False
    model.add(K.layers.Dense(64, activation="relu"))
    model.add(K.layers.Dropout(0.5))
    model.add(K.layers.BatchNormalization())
    model.add(K.layers.Dense(3, activation="softmax"))
    model.compile(
        optimizer=K.optimizers.SGD(learning_rate=1e-3, momentum=0.9),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    before = [w.numpy().copy() for w in model.weights]
    frozen = {id(w) for layer in model.layers[:15] for w in layer.weights}
    history = model.fit(x, y, batch_size=4, epochs=2, validation_data=(xv, yv), verbose=0)
    after = [w.numpy() for w in model.weights]
    changed = {
        w.path: not np.array_equal(b, a)
        for w, b, a in zip(model.weights, before, after, strict=True)
    }
    frozen_changed = [w.path for w in model.weights if id(w) in frozen and changed[w.path]]
    evaluation = model.evaluate(xv, yv, verbose=0)
    preds = model.predict(xv, verbose=0)
    lines = []
    model.summary(print_fn=lambda s, **kw: lines.append(s))
    model.save(path)
    return model, history, frozen_changed, changed, evaluation, preds, "\n".join(lines)


@pytest.mark.slow
def test_vgg16_tutorial_matches_keras(keras, ck, images, tmp_path):
    x, y = images(8, 32)
    xv, yv = images(4, 32, seed=1)
    k_model, k_hist, k_frozen, _, k_eval, k_pred, k_sum = _tutorial(
        keras, x, y, xv, yv, tmp_path / "k.keras"
    )
    c_model, c_hist, c_frozen, c_changed, c_eval, c_pred, c_sum = _tutorial(
        ck, x, y, xv, yv, tmp_path / "c.model"
    )

    assert [layer.name for layer in c_model.layers] == [layer.name for layer in k_model.layers]
    assert len(c_model.layers) == len(k_model.layers) == 23
    assert [type(la).__name__ for la in c_model.layers] == [
        type(la).__name__ for la in k_model.layers
    ]
    assert _trainable_count(c_model) == _trainable_count(k_model)
    assert c_model.count_params() == k_model.count_params()
    assert sorted(c_hist.history) == sorted(k_hist.history)
    assert all(len(v) == 2 for v in c_hist.history.values())
    assert k_frozen == [] and c_frozen == []
    head = [w.path for w in c_model.layers[-1].weights]
    assert all(c_changed[p] for p in head)
    conv5 = [w.path for w in c_model.get_layer("block5_conv3").weights]
    assert all(c_changed[p] for p in conv5)  # layers[15:] train
    assert isinstance(c_eval, list) and len(c_eval) == len(k_eval) == 2
    assert c_pred.shape == k_pred.shape == (4, 3)
    np.testing.assert_allclose(c_pred.sum(1), 1.0, rtol=1e-5)
    # summary: same totals lines and the same rows (name, type, output shape)
    for label in ("Total params", "Trainable params", "Non-trainable params"):
        k_line = next(li for li in k_sum.splitlines() if label + ":" in li).strip()
        c_line = next(li for li in c_sum.splitlines() if label + ":" in li).strip()
        assert c_line == k_line
    assert "block5_conv3 (Conv2D)" in c_sum and "(None, 2, 2, 512)" in c_sum
    # save / load predicts identically
    loaded = ck.models.load_model(tmp_path / "c.model")
    np.testing.assert_array_equal(loaded.predict(xv, verbose=0), c_pred)
    assert [w.shape for w in loaded.weights] == [w.shape for w in c_model.weights]


def _inception_recipe(K):
    base = K.applications.InceptionV3(weights=None, include_top=False, input_shape=(75, 75, 3))
    x = base.output
    x = K.layers.GlobalAveragePooling2D()(x)
    x = K.layers.Dense(16, activation="relu")(x)
    predictions = K.layers.Dense(3, activation="softmax")(x)
    model = K.Model(inputs=base.input, outputs=predictions)
    for layer in base.layers:
        layer.trainable = False
    model.compile(optimizer="rmsprop", loss="categorical_crossentropy")
    phase1 = {layer.name for layer in model.layers if layer.trainable and layer.weights}
    for layer in model.layers[:249]:
        layer.trainable = False
    for layer in model.layers[249:]:
        layer.trainable = True
    model.compile(
        optimizer=K.optimizers.SGD(learning_rate=0.0001, momentum=0.9),
        loss="categorical_crossentropy",
    )
    phase2 = {layer.name for layer in model.layers if layer.trainable}
    return model, phase1, phase2


@pytest.mark.slow
def test_inception_v3_recipe_matches_keras(keras, ck, images):
    k_model, k1, k2 = _inception_recipe(keras)
    c_model, c1, c2 = _inception_recipe(ck)
    assert len(c_model.layers) == len(k_model.layers) == 314
    assert [la.name for la in c_model.layers] == [la.name for la in k_model.layers]
    assert c1 == k1 == {"dense", "dense_1"}
    assert c2 == k2
    assert c_model.layers[249].name == k_model.layers[249].name
    # a real step: layers before 249 keep their weights, later ones train
    x, y = images(4, 75)
    before = {w.path: w.numpy().copy() for w in c_model.weights}
    c_model.fit(x, y, batch_size=2, epochs=1, steps_per_epoch=1, verbose=0)
    frozen = [w.path for la in c_model.layers[:249] for w in la.weights]
    trained = [w.path for la in c_model.layers[249:] for w in la.trainable_weights]
    after = {w.path: w.numpy() for w in c_model.weights}
    assert all(np.array_equal(before[p], after[p]) for p in frozen)
    assert any(not np.array_equal(before[p], after[p]) for p in trained)


def _bn_stats(model) -> dict:
    return {w.path: w.numpy().copy() for w in model.weights if "moving" in w.name}


def _guide(K, x, y):
    base = K.applications.ResNet50(weights=None, include_top=False, input_shape=(32, 32, 3))
    base.trainable = False
    inputs = K.Input(shape=(32, 32, 3))
    h = base(inputs, training=False)
    h = K.layers.GlobalAveragePooling2D()(h)
    h = K.layers.Dropout(0.2)(h)
    outputs = K.layers.Dense(1)(h)
    model = K.Model(inputs, outputs)
    model.compile(
        optimizer=K.optimizers.Adam(),
        loss=K.losses.BinaryCrossentropy(from_logits=True),
        metrics=[K.metrics.BinaryAccuracy()],
    )
    stats0 = _bn_stats(base)
    base0 = {w.path: w.numpy().copy() for w in base.weights}
    phase1_trainable = len(model.trainable_weights)
    h1 = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    stats1 = _bn_stats(base)
    base1 = {w.path: w.numpy().copy() for w in base.weights}
    base.trainable = True
    model.compile(
        optimizer=K.optimizers.Adam(1e-3),
        loss=K.losses.BinaryCrossentropy(from_logits=True),
        metrics=[K.metrics.BinaryAccuracy()],
    )
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    stats2 = _bn_stats(base)
    base2 = {w.path: w.numpy().copy() for w in base.weights}
    return dict(
        trainable1=phase1_trainable, h1=h1, s=(stats0, stats1, stats2), w=(base0, base1, base2)
    )


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_resnet50_transfer_guide_bn_stays_in_inference(keras, ck):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (8, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 2, (8, 1)).astype("float32")
    k = _guide(keras, x, y)
    c = _guide(ck, x, y)
    assert c["trainable1"] == k["trainable1"] == 2
    assert sorted(c["h1"].history) == sorted(k["h1"].history)
    s0, s1, s2 = c["s"]
    assert len(s0) == 106  # 53 BN layers x (moving_mean, moving_variance)
    assert _same(s0, s1) and _same(s1, s2)  # both phases: BN statistics untouched
    w0, w1, w2 = c["w"]
    assert _same(w0, w1)  # frozen base: only the head trained
    kernels = [p for p in w1 if p.endswith("kernel")]
    assert any(not np.array_equal(w1[p], w2[p]) for p in kernels)  # phase 2 fine-tunes
    # Keras 3 keeps its promise in phase 1 but not after unfreezing (keras-team/keras#20285)
    ks0, ks1, ks2 = k["s"]
    assert _same(ks0, ks1)
    assert not _same(ks1, ks2)
