"""``Sequential`` holds a functional graph of its layers, as in Keras: ``seq.outputs`` and each
layer's ``output`` exist once the input is known, so the Keras docs' feature-extractor
pattern runs the same code through real Keras 3 and compat.

Keras 3.15 (torch backend) raises ``AttributeError`` on ``seq.output`` (singular) although
``seq.outputs`` is defined -- Keras's own bug (``Operation.output`` looks for the Sequential's
own inbound node); compat returns ``seq.outputs[0]``."""

from __future__ import annotations

import numpy as np
import pytest


def _np(K, t) -> np.ndarray:
    return np.asarray(K.ops.convert_to_numpy(t))


def _stack(K):
    return K.Sequential(
        [
            K.Input((6, 6, 3)),
            K.layers.Conv2D(4, 3, name="conv"),
            K.layers.Flatten(name="flat"),
            K.layers.Dense(5, activation="relu", name="hidden"),
            K.layers.Dense(2, name="out"),
        ]
    )


def test_feature_extractor_from_sequential_layers(keras, ck):
    x = np.random.default_rng(0).normal(size=(3, 6, 6, 3)).astype("float32")
    results, weights = [], None
    for K in (keras, ck):
        seq = _stack(K)
        if weights is None:
            weights = seq.get_weights()
        else:
            seq.set_weights(weights)
        extractor = K.Model(inputs=seq.inputs, outputs=[layer.output for layer in seq.layers])
        whole = K.Model(seq.inputs, seq.outputs)
        results.append(
            (
                tuple(seq.outputs[0].shape),
                [tuple(layer.output.shape) for layer in seq.layers],
                [_np(K, f) for f in extractor(x)],
                _np(K, whole(x)),
                _np(K, seq(x)),
            )
        )
    (k_shape, k_shapes, k_feats, k_whole, k_seq), (c_shape, c_shapes, c_feats, c_whole, c_seq) = (
        results
    )
    assert c_shape == k_shape and c_shapes == k_shapes
    for c, k in zip(c_feats, k_feats, strict=True):
        np.testing.assert_allclose(c, k, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(c_whole, k_whole, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(c_seq, k_seq, rtol=1e-5, atol=1e-5)


def test_pop_and_add_rebuild_the_graph(keras, ck):
    seen = []
    for K in (keras, ck):
        seq = _stack(K)
        seq.pop()
        after_pop = tuple(seq.outputs[0].shape)
        seq.add(K.layers.Dense(7, name="new"))
        seen.append((after_pop, tuple(seq.outputs[0].shape), [layer.name for layer in seq.layers]))
    assert seen[1] == seen[0]


def test_outputs_before_the_input_is_known_is_an_error(keras, ck):
    for K in (keras, ck):
        seq = K.Sequential([K.layers.Dense(2)])
        with pytest.raises(AttributeError):
            seq.outputs  # noqa: B018


def test_output_is_the_single_output(ck):
    seq = ck.Sequential([ck.Input((3,)), ck.layers.Dense(2)])
    assert seq.output is seq.outputs[0] is seq.layers[-1].output
    with pytest.raises(AttributeError):
        ck.Sequential([ck.layers.Dense(2)]).output  # noqa: B018
