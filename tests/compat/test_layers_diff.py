"""Preprocessing layers against Keras's: deterministic outputs equal, random ones drawn
from the same family and ranges, inactive in predict."""

from __future__ import annotations

import numpy as np
import pytest


def _np(keras, t):
    return np.asarray(keras.ops.convert_to_numpy(t))


def _c(t):
    return np.asarray(t.detach())


@pytest.fixture
def batch():
    return np.random.default_rng(0).uniform(0, 255, (4, 12, 16, 3)).astype("float32")


@pytest.mark.parametrize(
    ("name", "args", "kwargs"),
    [
        ("Resizing", (7, 9), {}),
        ("Resizing", (7, 9), {"interpolation": "nearest"}),
        ("Resizing", (7, 9), {"interpolation": "bicubic"}),
        ("Resizing", (8, 8), {"crop_to_aspect_ratio": True}),
        ("Rescaling", (1 / 127.5, -1.0), {}),
        ("CenterCrop", (8, 10), {}),
        ("CenterCrop", (20, 10), {}),
        ("RandomCrop", (8, 10), {}),
    ],
)
def test_deterministic_preprocessing_matches_keras(keras, ck, batch, name, args, kwargs):
    k = getattr(keras.layers, name)(*args, **kwargs)
    c = getattr(ck.layers, name)(*args, **kwargs)
    np.testing.assert_allclose(
        _c(c(batch, training=False)), _np(keras, k(batch, training=False)), atol=1e-3
    )
    assert c.compute_output_shape((None, 12, 16, 3)) == tuple(
        k.compute_output_shape((None, 12, 16, 3))
    )


def test_random_crop_trains_on_windows_like_keras(keras, ck, batch):
    for K, to_np in ((keras, lambda t: _np(keras, t)), (ck, _c)):
        out = to_np(K.layers.RandomCrop(8, 10)(batch))
        assert out.shape == (4, 8, 10, 3)
        found = [
            (i, j)
            for i in range(12 - 8 + 1)
            for j in range(16 - 10 + 1)
            if np.array_equal(out, batch[:, i : i + 8, j : j + 10])
        ]
        assert len(found) == 1, K.__name__


def test_translation_with_a_fixed_factor_matches_keras(keras, ck, batch):
    k = keras.layers.RandomTranslation((0.25, 0.25), (-0.25, -0.25))
    c = ck.layers.RandomTranslation((0.25, 0.25), (-0.25, -0.25))
    np.testing.assert_allclose(_c(c(batch)), _np(keras, k(batch)), atol=1e-3)
    np.testing.assert_array_equal(_c(c(batch, training=False)), batch)


def test_brightness_with_a_fixed_factor_matches_keras(keras, ck, batch):
    k = keras.layers.RandomBrightness((0.2, 0.2))
    c = ck.layers.RandomBrightness((0.2, 0.2))
    np.testing.assert_allclose(_c(c(batch)), _np(keras, k(batch)), atol=1e-3)
    assert c.factor == tuple(k.factor)


@pytest.mark.parametrize("factor", [0.3, (0.2, 0.6), 0.0])
def test_contrast_factors_and_family_match_keras(keras, ck, batch, factor):
    k, c = keras.layers.RandomContrast(factor), ck.layers.RandomContrast(factor)
    assert c.factor == tuple(k.factor)
    x = batch / 4 + 100  # no clipping: the factor can be read back
    for layer, to_np in ((k, lambda t: _np(keras, t)), (c, _c)):
        out = to_np(layer(x))
        d = (x - x.mean(axis=(1, 2), keepdims=True)).reshape(4, -1)
        e = (out - x.mean(axis=(1, 2), keepdims=True)).reshape(4, -1)
        f = (d * e).sum(1) / (d * d).sum(1)  # least squares: out - mean = f (x - mean)
        np.testing.assert_allclose(e, f[:, None] * d, atol=1e-3)
        assert np.all(f >= 1 - layer.factor[0] - 1e-4)
        assert np.all(f <= 1 + layer.factor[1] + 1e-4)


@pytest.mark.parametrize("factor", [0.3, (-0.2, 0.4), (0.5, 0.1)])
def test_brightness_factors_match_keras(keras, ck, factor):
    assert ck.layers.RandomBrightness(factor).factor == tuple(
        keras.layers.RandomBrightness(factor).factor
    )


def test_random_layers_are_inactive_in_predict(ck, batch):
    inputs = ck.Input((12, 16, 3))
    h = ck.layers.RandomTranslation(0.2, 0.2)(inputs)
    h = ck.layers.RandomContrast(0.5)(h)
    h = ck.layers.RandomBrightness(0.3)(h)
    model = ck.Model(inputs, h)
    np.testing.assert_array_equal(model.predict(batch, verbose=0), batch)
    assert not np.allclose(_c(model(batch)), batch)


def test_normalization_adapt_matches_keras(keras, ck, batch):
    outs = []
    for K, to_np in ((keras, lambda t: _np(keras, t)), (ck, _c)):
        layer = K.layers.Normalization()
        layer.adapt(batch)
        inverse = K.layers.Normalization(
            mean=[1.0, 2.0, 3.0], variance=[4.0, 1.0, 0.25], invert=True
        )
        outs.append((to_np(layer(batch)), to_np(inverse(batch)), [w.shape for w in layer.weights]))
        inputs = K.Input((12, 16, 3))
        model = K.Model(inputs, layer(inputs))
        outs[-1] += (model.count_params(), model.predict(batch, verbose=0))
    (k1, k2, kshapes, kcount, kpred), (c1, c2, cshapes, ccount, cpred) = outs
    np.testing.assert_allclose(c1, k1, atol=1e-4)
    np.testing.assert_allclose(c2, k2, atol=1e-3)
    np.testing.assert_allclose(cpred, kpred, atol=1e-4)
    assert [tuple(s) for s in cshapes] == [tuple(s) for s in kshapes]
    assert ccount == kcount


@pytest.mark.parametrize(
    "initializer", ["glorot_normal", "he_normal", "glorot_uniform", "he_uniform"]
)
def test_named_kernel_initializers_draw_keras_distributions(keras, ck, initializer):
    """Keras's *_normal initializers are truncated normals with a corrected stddev, cut at two
    of them (VarianceScaling): the same spread and bounds in compat."""

    def kernel(mod):
        model = mod.Sequential(
            [mod.Input((300,)), mod.layers.Dense(200, kernel_initializer=initializer)]
        )
        return np.asarray(model.layers[0].get_weights()[0])

    ours, theirs = kernel(ck), kernel(keras)
    assert ours.shape == theirs.shape
    assert ours.std() == pytest.approx(theirs.std(), rel=0.03)
    assert np.abs(ours).max() <= np.abs(theirs).max() * 1.03
    assert np.abs(ours).max() >= np.abs(theirs).max() * 0.9
