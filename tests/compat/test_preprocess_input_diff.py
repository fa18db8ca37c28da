"""``preprocess_input`` through real Keras 3 and compat: NumPy arrays, torch tensors and a
symbolic tensor inside a functional model (the TensorFlow transfer-learning tutorial)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

MODES = ["caffe", "tf", "torch"]


def _pixels(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, size=shape).astype("float32")


@pytest.mark.parametrize("mode", MODES)
def test_symbolic_preprocess_input_is_a_graph_node(keras, ck, mode):
    x = _pixels((3, 5, 7, 3))
    outs = []
    for K in (keras, ck):
        inputs = K.Input((5, 7, 3))
        out = K.applications.imagenet_utils.preprocess_input(inputs, mode=mode)
        outs.append(np.asarray(K.Model(inputs, out).predict(x, verbose=0)))
    assert outs[1].dtype == outs[0].dtype
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-6, atol=1e-5)


def _base(K):
    inputs = K.Input((16, 16, 3))
    x = K.layers.Conv2D(4, 3, name="conv")(inputs)
    x = K.layers.BatchNormalization(name="bn")(x)
    return K.Model(inputs, x, name="base")


def test_transfer_learning_tutorial_pattern(keras, ck):
    """``x = preprocess_input(inputs); x = base_model(x, training=False); ...``"""
    models = []
    for K in (keras, ck):
        base = _base(K)
        base.trainable = False
        inputs = K.Input((16, 16, 3))
        x = K.applications.mobilenet_v2.preprocess_input(inputs)
        x = base(x, training=False)
        x = K.layers.GlobalAveragePooling2D()(x)
        x = K.layers.Dropout(0.2)(x)
        outputs = K.layers.Dense(1)(x)
        models.append(K.Model(inputs, outputs))
    k_model, c_model = models
    rng = np.random.default_rng(1)
    c_model.set_weights([rng.normal(size=w.shape).astype("float32") for w in c_model.get_weights()])
    k_model.set_weights(c_model.get_weights())
    x = _pixels((4, 16, 16, 3), seed=2)
    np.testing.assert_allclose(
        c_model.predict(x, verbose=0), k_model.predict(x, verbose=0), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(c_model(x).detach()),
        keras.ops.convert_to_numpy(k_model(x)),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float32", "float64", "uint8"])
def test_numpy_input_matches_keras_including_overwrite(keras, ck, mode, dtype):
    """Keras writes over a floating input array (documented) and keeps its dtype."""
    base = _pixels((2, 4, 4, 3)).astype(dtype)
    results, inputs = [], []
    for K in (keras, ck):
        x = base.copy()
        results.append(K.applications.imagenet_utils.preprocess_input(x, mode=mode))
        inputs.append(x)
    assert results[1].dtype == results[0].dtype
    np.testing.assert_allclose(results[1], results[0], rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(inputs[1], inputs[0])


@pytest.mark.parametrize("mode", MODES)
def test_torch_tensor_input_matches_keras(keras, ck, mode):
    base = torch.from_numpy(_pixels((2, 4, 4, 3)))
    results, inputs = [], []
    for K in (keras, ck):
        x = base.clone()
        results.append(K.applications.imagenet_utils.preprocess_input(x, mode=mode))
        inputs.append(x)
    assert isinstance(results[1], torch.Tensor)
    k = keras.ops.convert_to_numpy(results[0])
    np.testing.assert_allclose(results[1].numpy(), k, rtol=1e-6, atol=1e-5)
    np.testing.assert_array_equal(inputs[1].numpy(), keras.ops.convert_to_numpy(inputs[0]))


def test_bad_arguments_raise_like_keras(keras, ck):
    x = _pixels((1, 2, 2, 3))
    for K in (keras, ck):
        with pytest.raises(ValueError, match="mode"):
            K.applications.imagenet_utils.preprocess_input(x, mode="bgr")
        with pytest.raises(ValueError, match="data_format"):
            K.applications.imagenet_utils.preprocess_input(x, data_format="nhwc")
