"""``keras.ops`` functions from transfer-learning tutorials, eager and inside a model."""

from __future__ import annotations

import numpy as np
import pytest


def _np(keras, t):
    return np.asarray(keras.ops.convert_to_numpy(t))


def test_eager_ops_match_keras(keras, ck):
    rng = np.random.default_rng(0)
    labels = np.array([2, 0, 1, 2])
    scores = rng.normal(size=(4, 5)).astype("float32")
    images = rng.uniform(0, 255, (2, 9, 13, 3)).astype("float32")
    for name, args, kwargs in (
        ("one_hot", (labels, 3), {}),
        ("argmax", (scores,), {"axis": -1}),
        ("argmax", (scores,), {"axis": 0, "keepdims": True}),
        ("expand_dims", (scores,), {"axis": 0}),
        ("cast", (scores, "int32"), {}),
        ("add", (scores, 1.5), {}),
        ("divide", (labels, 2), {}),
    ):
        k = _np(keras, getattr(keras.ops, name)(*args, **kwargs))
        c = ck.ops.convert_to_numpy(getattr(ck.ops, name)(*args, **kwargs))
        assert c.dtype == k.dtype, name
        np.testing.assert_allclose(c, k, atol=1e-6, err_msg=name)
    for interpolation in ("bilinear", "nearest"):
        k = _np(keras, keras.ops.image.resize(images, (6, 7), interpolation=interpolation))
        c = ck.ops.convert_to_numpy(
            ck.ops.image.resize(images, (6, 7), interpolation=interpolation)
        )
        np.testing.assert_allclose(c, k, atol=1e-4)


def test_ops_on_symbolic_tensors_inside_a_model(keras, ck):
    x = np.random.default_rng(1).integers(0, 256, (3, 10, 12, 3)).astype("uint8")
    outs = []
    for K in (keras, ck):
        inputs = K.Input((10, 12, 3))
        h = K.ops.cast(inputs, "float32")
        h = K.ops.image.resize(h, (5, 6))
        h = K.ops.subtract(K.ops.divide(h, 127.5), 1.0)
        model = K.Model(inputs, h)
        outs.append(model.predict(x, verbose=0))
        assert tuple(model.output_shape) == (None, 5, 6, 3)
    np.testing.assert_allclose(outs[1], outs[0], atol=1e-5)


def test_unsupported_ops_raise_naming_them(ck):
    with pytest.raises(NotImplementedError, match=r"compat\.ops\.einsum"):
        ck.ops.einsum("ij->ji", np.ones((2, 2)))
