"""compat fit serves a frozen base's outputs from ftlight's FeatureCache when that is safe."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from compat.feature_cache import static_prefix
from compat.layers.base import inference_modules


class Rows:
    """Counts the rows a layer's first convolution (or ``kind``) sees (its forward calls)."""

    def __init__(self, layer: nn.Module, kind: type[nn.Module] = nn.Conv2d) -> None:
        conv = next(m for m in layer.modules() if isinstance(m, kind))
        self.n = 0
        self.handle = conv.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any, out: torch.Tensor) -> None:
        self.n += len(out)

    def take(self) -> int:
        n, self.n = self.n, 0
        return n


def tiny_base(K: Any, name: str = "base") -> Any:
    inputs = K.Input((32, 32, 3))
    x = K.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = K.layers.BatchNormalization()(x)
    x = K.layers.Conv2D(8, 3, activation="relu")(x)
    return K.Model(inputs, x, name=name)


def data(n: int = 24, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (n, 32, 32, 3)).astype("float32")
    return x, rng.integers(0, classes, n)


def fit_both(K: Any, model: Any, base: Any, loss: Any, epochs: int = 3) -> dict[bool, tuple]:
    """fit from the same weights and seed, cached and not; (history, weights, base rows)."""
    x, y = data()
    start = model.get_weights()
    rows = Rows(base)
    out = {}
    for cache in (False, True):
        model.set_weights(start)
        model.compile(optimizer="adam", loss=loss, metrics=["accuracy"], cache_features=cache)
        K.utils.set_random_seed(1)
        hist = model.fit(x, y, batch_size=6, epochs=epochs, validation_split=0.25, verbose=0)
        out[cache] = (hist.history, model.get_weights(), rows.take())
    return out


def assert_same_training(out: dict[bool, tuple], epochs: int = 3) -> None:
    (h0, w0, _), (h1, w1, _) = out[False], out[True]
    assert sorted(h0) == sorted(h1) and all(len(v) == epochs for v in h1.values())
    for key in h0:
        np.testing.assert_allclose(h1[key], h0[key], rtol=1e-6, atol=1e-6)
    for a, b in zip(w0, w1, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)


def test_sequential_frozen_base_caches_and_trains_identically(ck) -> None:
    base = tiny_base(ck)
    base.trainable = False
    model = ck.Sequential(
        [
            ck.Input((32, 32, 3)),
            base,
            ck.layers.GlobalAveragePooling2D(),
            ck.layers.Dense(3, activation="softmax"),
        ]
    )
    head_before = model.layers[-1].get_weights()
    out = fit_both(ck, model, base, "sparse_categorical_crossentropy")
    assert_same_training(out)
    assert out[False][2] == 3 * 24  # 18 train + 6 val rows per epoch, recomputed
    assert out[True][2] == 24  # computed once
    assert not np.allclose(model.layers[-1].get_weights()[0], head_before[0])  # head trained


def test_functional_transfer_learning_guide_pattern(ck) -> None:
    """keras.io transfer-learning guide: base(inputs, training=False) -> GAP -> Dropout -> Dense."""
    base = ck.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    base.trainable = False
    inputs = ck.Input((32, 32, 3))
    x = base(inputs, training=False)
    x = ck.layers.GlobalAveragePooling2D()(x)
    x = ck.layers.Dropout(0.2)(x)  # random, but after the cut: the head still sees new masks
    outputs = ck.layers.Dense(1)(x)
    model = ck.Model(inputs, outputs)
    base_before = base.get_weights()
    y_binary = ck.losses.BinaryCrossentropy(from_logits=True)
    out = fit_both(ck, model, base, y_binary, epochs=2)
    assert_same_training(out, epochs=2)
    assert (out[False][2], out[True][2]) == (2 * 24, 24)
    for a, b in zip(base_before, base.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_functional_head_on_base_output_is_a_clean_cut(ck) -> None:
    base = tiny_base(ck)
    for layer in base.layers:
        layer.trainable = False
    x = ck.layers.GlobalAveragePooling2D()(base.output)
    model = ck.Model(base.input, ck.layers.Dense(3, activation="softmax")(x))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    prefix = static_prefix(model, inference_modules(model))
    assert prefix is not None
    assert [type(m).__name__ for m in prefix.extractor] == [
        "Conv2D",
        "BatchNormalization",
        "Conv2D",
        "GlobalAveragePooling2D",
    ]
    out = fit_both(ck, model, base, "sparse_categorical_crossentropy", epochs=2)
    assert_same_training(out, epochs=2)
    assert (out[False][2], out[True][2]) == (2 * 24, 24)


def compile_and_fit(model: Any, base: Any, x: Any, y: Any = None, **kw: Any) -> tuple[bool, int]:
    """(has a static prefix after compile(), rows the base saw in a 2-epoch fit)."""
    rows = Rows(base)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    has_prefix = static_prefix(model, inference_modules(model)) is not None
    model.fit(x, y, epochs=2, verbose=0, **kw)
    return has_prefix, rows.take()


@pytest.mark.parametrize("front", ["dropout", "random_flip", "unfrozen"])
def test_random_layers_or_a_trainable_base_run_uncached(ck, front: str) -> None:
    base = tiny_base(ck)
    base.trainable = front == "unfrozen"
    first = {
        "dropout": [ck.layers.Dropout(0.3)],
        "random_flip": [ck.layers.RandomFlip("horizontal")],
        "unfrozen": [],
    }[front]
    model = ck.Sequential(
        [
            ck.Input((32, 32, 3)),
            *first,
            base,
            ck.layers.GlobalAveragePooling2D(),
            ck.layers.Dense(3, activation="softmax"),
        ]
    )
    x, y = data(12)
    assert compile_and_fit(model, base, x, y, batch_size=4) == (False, 2 * 12)


def test_augmenting_generator_runs_uncached(ck) -> None:
    base = tiny_base(ck)
    base.trainable = False
    model = ck.Sequential(
        [ck.Input((32, 32, 3)), base, ck.layers.Flatten(), ck.layers.Dense(3, activation="softmax")]
    )
    x, y = data(12)
    gen = ck.preprocessing.image.ImageDataGenerator(horizontal_flip=True, rotation_range=10)
    # the model could cache, the data cannot: each epoch sees new flips and rotations
    assert compile_and_fit(model, base, gen.flow(x, y, batch_size=4)) == (True, 2 * 12)


def test_unfreezing_and_recompiling_recomputes_the_base(ck) -> None:
    base = tiny_base(ck)
    base.trainable = False
    inputs = ck.Input((32, 32, 3))
    x = ck.layers.GlobalAveragePooling2D()(base(inputs, training=False))
    model = ck.Model(inputs, ck.layers.Dense(3, activation="softmax")(x))
    x_train, y_train = data(12)
    assert compile_and_fit(model, base, x_train, y_train, batch_size=4) == (True, 12)  # once
    frozen = base.get_weights()
    base.trainable = True  # fine-tuning phase: takes effect at compile(), as in Keras
    assert compile_and_fit(model, base, x_train, y_train, batch_size=4) == (False, 2 * 12)
    assert any(
        not np.allclose(a, b) for a, b in zip(frozen, base.get_weights(), strict=True)
    )  # the base trained on fresh forward passes, not on stale features


def test_sample_weights_and_validation_weights_match_uncached(ck) -> None:
    base = tiny_base(ck)
    base.trainable = False
    model = ck.Sequential(
        [ck.Input((32, 32, 3)), base, ck.layers.Flatten(), ck.layers.Dense(3, activation="softmax")]
    )
    x, y = data(16)
    weights = np.linspace(0.5, 1.5, 16).astype("float32")
    val = (x[12:], y[12:], weights[12:])
    start, rows, out = model.get_weights(), Rows(base), {}
    for cache in (False, True):
        model.set_weights(start)
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", cache_features=cache)
        ck.utils.set_random_seed(1)
        hist = model.fit(
            x[:12],
            y[:12],
            batch_size=4,
            epochs=2,
            sample_weight=weights[:12],
            validation_data=val,
            verbose=0,
        )
        out[cache] = (hist.history, model.get_weights(), rows.take())
    assert_same_training(out, epochs=2)
    assert (out[False][2], out[True][2]) == (2 * 16, 16)


def test_prefix_larger_than_its_input_is_recomputed(ck) -> None:
    """Only an early conv is frozen: its activations outweigh the images, so no cache."""
    conv = ck.layers.Conv2D(16, 3, padding="same", trainable=False)
    model = ck.Sequential(
        [
            ck.Input((32, 32, 3)),
            conv,
            ck.layers.Conv2D(4, 3, strides=4),
            ck.layers.Flatten(),
            ck.layers.Dense(3, activation="softmax"),
        ]
    )
    x, y = data(12)
    # one batch is tried in the caching pass, then every epoch recomputes (no retries)
    assert compile_and_fit(model, conv, x, y, batch_size=4) == (True, 4 + 2 * 12)


class _Batches(torch.utils.data.IterableDataset):
    def __init__(self, x: np.ndarray, y: np.ndarray, batch: int) -> None:
        self.x, self.y, self.batch = torch.from_numpy(x), torch.from_numpy(y), batch

    def __iter__(self) -> Any:
        for i in range(0, len(self.x), self.batch):
            yield self.x[i : i + self.batch], self.y[i : i + self.batch]


def test_uncacheable_validation_loader_keeps_training_rows_cached(ck) -> None:
    """An IterableDataset validation loader runs on images; training stays cached."""
    base = tiny_base(ck)
    base.trainable = False
    model = ck.Sequential(
        [ck.Input((32, 32, 3)), base, ck.layers.Flatten(), ck.layers.Dense(3, activation="softmax")]
    )
    x, y = data(16)
    val = torch.utils.data.DataLoader(_Batches(x[12:], y[12:], 2), batch_size=None)
    start, rows, out = model.get_weights(), Rows(base), {}
    for cache in (False, True):
        model.set_weights(start)
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", cache_features=cache)
        ck.utils.set_random_seed(1)
        hist = model.fit(x[:12], y[:12], batch_size=4, epochs=3, validation_data=val, verbose=0)
        out[cache] = (hist.history, model.get_weights(), rows.take())
    assert_same_training(out, epochs=3)
    assert (out[False][2], out[True][2]) == (3 * 16, 12 + 3 * 4)


def test_marker_not_shape_tells_cached_rows_from_inputs(ck) -> None:
    """A frozen Dense(8) on 8-wide inputs: cached rows have the inputs' shape, so only the
    FeatureBatch marker can tell them apart. They are cached, and train as uncached."""
    frozen = ck.layers.Dense(8, activation="relu", trainable=False)
    model = ck.Sequential([ck.Input((8,)), frozen, ck.layers.Dense(3, activation="softmax")])
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(24, 8)).astype("float32"), rng.integers(0, 3, 24)
    start, rows, out = model.get_weights(), Rows(frozen, nn.Linear), {}
    for cache in (False, True):
        model.set_weights(start)
        model.compile(
            optimizer="adam", loss="sparse_categorical_crossentropy", cache_features=cache
        )
        ck.utils.set_random_seed(1)
        hist = model.fit(x, y, batch_size=6, epochs=3, validation_split=0.25, verbose=0)
        out[cache] = (hist.history, model.get_weights(), rows.take())
    assert_same_training(out)
    assert (out[False][2], out[True][2]) == (3 * 24, 24)
