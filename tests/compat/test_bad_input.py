"""Bad input at the Keras boundary: errors that say what was received, what was expected and
how to fix it. (Other compat shape/type errors: test_layers.py, test_applications.py,
test_training.py::test_fit_without_compile_and_bad_data.)"""

from __future__ import annotations

import warnings

import numpy as np
import pytest


def _model(K, classes=3):
    return K.Sequential(
        [
            K.Input((8, 8, 3)),
            K.layers.Conv2D(4, 3, activation="relu"),
            K.layers.GlobalAveragePooling2D(),
            K.layers.Dense(classes, activation="softmax"),
        ]
    )


def test_one_hot_labels_with_a_sparse_loss(ck, images):
    x, y = images(8, 8)  # y is one-hot (8, 3)
    model = _model(ck)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError) as err:
        model.fit(x, y, verbose=0)
    message = str(err.value)
    assert "target.shape=(8, 3)" in message and "integer labels of shape (batch,)" in message
    assert "loss='categorical_crossentropy'" in message and "y.argmax(-1)" in message
    model.fit(x, y.argmax(-1), verbose=0)  # the suggested fix works


def test_integer_labels_with_a_categorical_loss(ck, images):
    x, y = images(8, 8)
    labels = y.argmax(-1)
    model = _model(ck)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    with pytest.raises(ValueError) as err:
        model.fit(x, labels, verbose=0)
    message = str(err.value)
    assert "expects one-hot labels of shape (8, 3)" in message and "target.shape=(8,)" in message
    assert "sparse_categorical_crossentropy" in message and "to_categorical(y, 3)" in message
    model.fit(x, ck.utils.to_categorical(labels, 3), verbose=0)


def test_sparse_labels_out_of_range(ck, images):
    x, _ = images(8, 8)
    model = _model(ck)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    labels = np.array([0, 1, 2, 5, 0, 1, 2, 0])
    with pytest.raises(ValueError, match=r"label value of 5 .* range of \[0, 2\] .* 3 outputs"):
        model.fit(x, labels, verbose=0)
    with pytest.raises(ValueError, match="label value of -1"):
        model.evaluate(x, np.where(labels == 5, -1, labels), verbose=0)


def test_channels_first_arrays_to_a_channels_last_model(ck, images):
    x, y = images(8, 8)
    nchw = x.transpose(0, 3, 1, 2)
    model = _model(ck)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    for call in (lambda: model.fit(nchw, y, verbose=0), lambda: model.predict(nchw, verbose=0)):
        with pytest.raises(ValueError) as err:
            call()
        message = str(err.value)
        assert "expected shape=(None, 8, 8, 3), found shape=(None, 3, 8, 8)" in message
        assert "channels-first" in message and "x.transpose(0, 2, 3, 1)" in message
    # A model without an input shape is built from the data (as Keras does), with a warning.
    unbuilt = ck.Sequential([ck.layers.Conv2D(2, 3), ck.layers.GlobalAveragePooling2D()])
    with pytest.warns(UserWarning, match="looks channels-first"):
        unbuilt.predict(nchw, verbose=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert model.predict(x, verbose=0).shape == (8, 3)  # channels-last: no warning


def test_channels_first_where_compat_expects_channels_last_configuration(ck):
    """The reverse direction: channels-first shapes/options are refused, with the fix."""
    with pytest.raises(
        ValueError, match=r"Received: input_shape=\(3, 64, 64\).*pass \(64, 64, 3\)"
    ):
        ck.applications.ResNet50(weights=None, include_top=False, input_shape=(3, 64, 64))
    with pytest.raises(NotImplementedError, match="channels_last at its boundary"):
        ck.layers.Conv2D(4, 3, data_format="channels_first")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_inf_in_inputs(ck, images, value):
    x, y = images(8, 8)
    x[5, 0, 0, 0] = value
    kind = "NaN" if np.isnan(value) else "Inf"
    model = _model(ck)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    with pytest.raises(
        ValueError, match=rf"`x` contains {kind} values in 1 of 8 samples \(indices \[5\]\)"
    ):
        model.fit(x, y, verbose=0)
    with pytest.raises(ValueError, match=kind):
        model.predict(x, verbose=0)
    y_bad = y.copy()
    y_bad[2, 0] = value
    with pytest.raises(ValueError, match=rf"`y` contains {kind}"):
        model.fit(x[:5], y_bad[:5], verbose=0)


def test_include_top_with_an_input_shape_the_top_cannot_take(ck):
    with pytest.raises(
        ValueError, match=r"should be \(224, 224, 3\). Received: input_shape=\(64, 64, 3\)"
    ):
        # Raised before any weights are fetched (this machine has no hub access).
        ck.applications.VGG16(weights="imagenet", include_top=True, input_shape=(64, 64, 3))
    with pytest.raises(ValueError, match=r"should be \(299, 299, 3\)"):
        ck.applications.InceptionV3(weights="imagenet", include_top=True, input_shape=(224, 224, 3))
    with pytest.raises(ValueError, match="static `input_shape`"):
        ck.applications.VGG16(weights=None, include_top=True, input_shape=(None, None, 3))
    with pytest.raises(ValueError, match="at least 32x32"):
        ck.applications.ResNet50(weights=None, include_top=True, input_shape=(16, 16, 3))
    # Random weights: the top is sized for the input, as in Keras (fc1 takes 2*2*512).
    model = ck.applications.VGG16(weights=None, include_top=True, input_shape=(64, 64, 3))
    assert model.get_layer("fc1").get_weights()[0].shape == (2048, 4096)


def test_positional_metrics_in_compile_are_named_as_keras_reads_them(ck):
    # Keras 3: compile(optimizer, loss, loss_weights, metrics, ...) -- a tutorial's
    # compile("rmsprop", "sparse_categorical_crossentropy", ["accuracy"]) passes loss_weights.
    model = ck.Sequential([ck.Input((4,)), ck.layers.Dense(2)])
    with pytest.raises(NotImplementedError, match=r"loss_weights=\['accuracy'\].*metrics="):
        model.compile("rmsprop", "sparse_categorical_crossentropy", ["accuracy"])
