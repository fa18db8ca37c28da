"""Layers and models: Keras shapes, names, trainability and errors."""

from __future__ import annotations

import numpy as np
import pytest


def _tiny(K):
    return K.Sequential(
        [
            K.Input((8, 8, 3)),
            K.layers.Conv2D(4, 3, padding="same", activation="relu"),
            K.layers.BatchNormalization(),
            K.layers.MaxPooling2D(),
            K.layers.Flatten(),
            K.layers.Dense(5, kernel_regularizer=K.regularizers.l2(0.01)),
            K.layers.Dense(2, activation="softmax"),
        ]
    )


def test_weights_shapes_and_names_equal_keras(keras, ck):
    k, c = _tiny(keras), _tiny(ck)
    assert [w.shape for w in c.get_weights()] == [tuple(w.shape) for w in k.get_weights()]
    assert [la.name for la in c.layers] == [la.name for la in k.layers]
    assert c.count_params() == k.count_params()
    assert len(c.trainable_weights) == len(k.trainable_weights) == 8
    assert len(c.non_trainable_weights) == len(k.non_trainable_weights) == 2


def test_set_weights_round_trips_keras_weights_exactly(keras, ck):
    k, c = _tiny(keras), _tiny(ck)
    c.set_weights(k.get_weights())
    x = np.random.default_rng(0).uniform(size=(3, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(
        c.predict(x, verbose=0), k.predict(x, verbose=0), rtol=1e-4, atol=1e-6
    )


def test_trainable_is_recursive_and_counts(ck):
    model = _tiny(ck)
    outer = ck.Sequential([ck.Input((8, 8, 3)), model])
    model.trainable = False
    assert all(not la.trainable for la in model.layers)
    assert outer.trainable_weights == []
    assert len(outer.non_trainable_weights) == 10


def test_functional_symbolic_graph(ck):
    inputs = ck.Input((6, 6, 3))
    a = ck.layers.Conv2D(2, 1)(inputs)
    b = ck.layers.Conv2D(3, 1)(inputs)
    merged = ck.layers.Concatenate()([a, b])
    out = ck.layers.GlobalMaxPooling2D()(merged)
    model = ck.Model(inputs, out)
    assert out.shape == (None, 5)
    assert [la.name for la in model.layers] == [
        "input_layer",
        "conv2d",
        "conv2d_1",
        "concatenate",
        "global_max_pooling2d",
    ]
    y = model.predict(np.ones((2, 6, 6, 3), "float32"), verbose=0)
    assert y.shape == (2, 5)


def test_pop_and_get_layer(ck):
    model = _tiny(ck)
    last = model.pop()
    assert last.name == "dense_1" and model.output_shape == (None, 5)
    assert model.get_layer("dense").name == "dense"
    with pytest.raises(ValueError, match="No such layer: nope"):
        model.get_layer("nope")


def test_wrong_shapes_and_types_say_received_and_expected(ck):
    dense = ck.layers.Dense(3)
    dense(ck.Input((4,)))
    with pytest.raises(ValueError, match=r"expected axis -1 of input shape to have value 4"):
        dense(ck.Input((5,)))
    with pytest.raises(ValueError, match=r"Received: units=0"):
        ck.layers.Dense(0)
    with pytest.raises(ValueError, match=r"Only instances of `keras\.Layer`"):
        ck.Sequential().add("dense")
    model = _tiny(ck)
    with pytest.raises(ValueError, match=r"expected shape=\(None, 8, 8, 3\)"):
        model.predict(np.zeros((1, 9, 9, 3), "float32"), verbose=0)


def test_unsupported_features_raise_not_implemented(ck):
    with pytest.raises(NotImplementedError, match="data_format"):
        ck.layers.Conv2D(2, 3, data_format="channels_first")
    with pytest.raises(NotImplementedError, match="LSTM"):
        _ = ck.layers.LSTM
    with pytest.raises(NotImplementedError, match="Subclassed"):
        ck.Model()
    with pytest.raises(NotImplementedError, match=r"RandomRotation\(fill_mode='constant'\)"):
        ck.layers.RandomRotation(0.1, fill_mode="constant")
    with pytest.raises(NotImplementedError, match=r"RandomZoom\(interpolation='nearest'\)"):
        ck.layers.RandomZoom(0.1, interpolation="nearest")


def test_same_padding_strided_conv_matches_keras(keras, ck):
    k = keras.Sequential(
        [
            keras.Input((7, 7, 2)),
            keras.layers.Conv2D(3, 3, strides=2, padding="same"),
            keras.layers.AveragePooling2D(3, strides=1, padding="same"),
        ]
    )
    c = ck.Sequential(
        [
            ck.Input((7, 7, 2)),
            ck.layers.Conv2D(3, 3, strides=2, padding="same"),
            ck.layers.AveragePooling2D(3, strides=1, padding="same"),
        ]
    )
    c.set_weights(k.get_weights())
    x = np.random.default_rng(1).normal(size=(2, 7, 7, 2)).astype("float32")
    np.testing.assert_allclose(
        c.predict(x, verbose=0), k.predict(x, verbose=0), rtol=1e-4, atol=1e-5
    )
