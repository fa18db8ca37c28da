"""compat's data adapters (``compat.data_adapters``) against Keras's: the same errors for
inputs Keras refuses, the same warnings, the same batching, one adapter class per kind."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from compat import data_adapters
from tests.conftest import batches_per_epoch, two_batch_pydataset

X = np.random.default_rng(0).uniform(0, 1, (8, 3)).astype("float32")
Y = np.eye(2, dtype="float32")[np.arange(8) % 2]


def _model(mod, seed_weights=None):
    m = mod.Sequential([mod.Input((3,)), mod.layers.Dense(2, activation="softmax")])
    m.compile(optimizer=mod.optimizers.SGD(learning_rate=0.1), loss="categorical_crossentropy")
    if seed_weights is not None:
        m.set_weights(seed_weights)
    return m


def _batches(mod):
    return two_batch_pydataset(mod, X, Y)


def _generator(n: int = 2, tuples: bool = True):
    for i in range(n):
        batch = X[i * 4 % 8 : i * 4 % 8 + 4], Y[i * 4 % 8 : i * 4 % 8 + 4]
        yield batch if tuples else batch[0]


def _loader():
    return torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.tensor(X), torch.tensor(Y)), batch_size=4
    )


CW = {0: 1.0, 1: 2.0}
BAD = {
    "pydataset_y": lambda mod, m: m.fit(_batches(mod), Y, verbose=0),
    "pydataset_sample_weight": lambda mod, m: m.fit(
        _batches(mod), sample_weight=np.ones(8), verbose=0
    ),
    "evaluate_pydataset_y": lambda mod, m: m.evaluate(_batches(mod), Y, verbose=0),
    "dataloader_y": lambda mod, m: m.fit(_loader(), Y, verbose=0),
    "dataloader_sample_weight": lambda mod, m: m.fit(
        _loader(), sample_weight=np.ones(8), verbose=0
    ),
    "dataloader_class_weight": lambda mod, m: m.fit(_loader(), class_weight=CW, verbose=0),
    "generator_y": lambda mod, m: m.fit(_generator(), Y, verbose=0),
    "generator_sample_weight": lambda mod, m: m.fit(
        _generator(), sample_weight=np.ones(8), verbose=0
    ),
    "generator_class_weight": lambda mod, m: m.fit(_generator(), class_weight=CW, verbose=0),
    "generator_not_tuples": lambda mod, m: m.predict(_generator(tuples=False), verbose=0),
    "generator_empty": lambda mod, m: m.fit(_generator(0), verbose=0),
    "class_weight_and_sample_weight": lambda mod, m: m.fit(
        X, Y, class_weight=CW, sample_weight=np.ones(8), verbose=0
    ),
    "unrecognized": lambda mod, m: m.fit("not data", verbose=0),
    "validation_split_pydataset": lambda mod, m: m.fit(
        _batches(mod), validation_split=0.5, verbose=0
    ),
    "validation_split_generator": lambda mod, m: m.fit(
        _generator(), validation_split=0.5, verbose=0
    ),
}


def _error(mod, case) -> tuple[type, str]:
    with pytest.raises(Exception) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        BAD[case](mod, _model(mod))
    return type(info.value), re.sub(r"0x[0-9a-f]+", "0x?", str(info.value))


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_combinations_raise_what_keras_raises(keras, ck, case) -> None:
    k_type, k_msg = _error(keras, case)
    c_type, c_msg = _error(ck, case)
    assert (c_type, c_msg) == (k_type, k_msg)


def _shuffle_warnings(mod, x, **kw) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _model(mod).fit(x, verbose=0, **kw)
    return [str(w.message) for w in caught if "shuffle" in str(w.message)]


@pytest.mark.parametrize("kind", ["dataloader", "generator", "pydataset"])
def test_ignored_shuffle_warns_like_keras(keras, ck, kind) -> None:
    def make(mod):
        return {"dataloader": _loader, "generator": _generator}.get(kind, lambda: _batches(mod))()

    for kw in ({}, {"shuffle": False}):
        assert _shuffle_warnings(ck, make(ck), **kw) == _shuffle_warnings(keras, make(keras), **kw)
    if kind != "pydataset":  # fit's default shuffle=True is ignored for these, with a warning
        assert _shuffle_warnings(ck, make(ck))


def _history_and_steps(mod, weights, *data, **kw) -> tuple[list[float], list[int]]:
    count, steps = batches_per_epoch(mod)
    model = _model(mod, weights)
    history = model.fit(*data, verbose=0, shuffle=False, callbacks=[count], **kw)
    return history.history["loss"], steps


@pytest.mark.parametrize(
    "case",
    ["steps_without_batch_size", "generator_epochs", "pydataset_batch_size", "dataloader"],
)
def test_batching_matches_keras(keras, ck, case) -> None:
    """Same batches -> same steps and losses. Arrays with ``steps_per_epoch`` and no
    ``batch_size`` are cut into ``ceil(n / steps)``-sample batches; without ``steps_per_epoch``
    a generator's first two batches start every epoch again (Keras reads them ahead; with it,
    one pass runs on across epochs); ``batch_size`` is ignored for a PyDataset."""
    weights = _model(keras).get_weights()

    def args(mod):
        return {
            "steps_without_batch_size": lambda: ((X, Y), {"steps_per_epoch": 2}),
            "generator_epochs": lambda: ((_generator(3),), {"epochs": 2}),
            "pydataset_batch_size": lambda: ((_batches(mod),), {"batch_size": 3}),
            "dataloader": lambda: ((_loader(),), {"epochs": 2}),
        }[case]()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (k_x, k_kw), (c_x, c_kw) = args(keras), args(ck)
        k_loss, k_steps = _history_and_steps(keras, weights, *k_x, **k_kw)
        c_loss, c_steps = _history_and_steps(ck, weights, *c_x, **c_kw)
    assert c_steps == k_steps
    np.testing.assert_allclose(c_loss, k_loss, rtol=1e-5, atol=1e-6)


def test_one_adapter_class_per_kind_as_keras(keras, ck) -> None:
    from keras.src.trainers import data_adapters as k_adapters

    inputs = {
        "arrays": lambda mod: (X, Y),
        "pydataset": lambda mod: (_batches(mod),),
        "dataloader": lambda mod: (_loader(),),
        "generator": lambda mod: (_generator(),),
    }
    for kind, make in inputs.items():
        k = k_adapters.get_data_adapter(*make(keras))
        c = data_adapters.get_data_adapter(*make(ck))
        assert type(c).__name__ == type(k).__name__, kind
        assert c.num_batches == k.num_batches, kind
    flow = ck.preprocessing.image.ImageDataGenerator().flow(
        np.zeros((4, 8, 8, 3)), np.zeros(4), batch_size=2
    )
    assert type(data_adapters.get_data_adapter(flow)).__name__ == "PyDatasetAdapter"


def test_image_dataset_keeps_its_order_like_a_tf_dataset(ck, tmp_path) -> None:
    """``image_dataset_from_directory`` gives a ``tf.data.Dataset`` in Keras: ``fit``'s
    ``shuffle=True`` does not reorder its batches (Keras warns that it is ignored)."""
    for i in range(6):
        folder = tmp_path / f"class_{i % 2}"
        folder.mkdir(exist_ok=True)
        Image.fromarray(np.full((4, 4, 3), 40 * i, "uint8")).save(folder / f"{i}.png")
    ds = ck.utils.image_dataset_from_directory(
        tmp_path, image_size=(4, 4), batch_size=1, shuffle=False
    )
    with pytest.warns(UserWarning, match=r"provided as a tf\.data\.Dataset"):
        adapter = data_adapters.get_data_adapter(ds, shuffle=True)
    with pytest.raises(ValueError, match=r"as a tf\.data\.Dataset, `y` should not be passed"):
        data_adapters.get_data_adapter(ds, np.zeros(6))
    seen = [int(x[0, 0, 0, 0]) for x, _ in adapter.get_torch_dataloader()]
    assert seen == [int(ds[i][0][0, 0, 0, 0]) for i in range(len(ds))]
    assert seen != sorted(seen, reverse=True)  # a real order (not all equal)


@pytest.mark.parametrize(
    "layer, kwargs",
    [
        ("RandomFlip", {}),
        ("RandomFlip", {"mode": "horizontal"}),
        ("RandomRotation", {"factor": 0.1}),
        ("RandomRotation", {"factor": (-0.2, 0.3)}),
        ("Dropout", {"rate": 0.5}),
    ],
)
@pytest.mark.parametrize("seed", [None, 3])
def test_seeded_layers_get_config_like_keras(keras, ck, layer, kwargs, seed) -> None:
    k_cfg = getattr(keras.layers, layer)(seed=seed, **kwargs).get_config()
    c_cfg = getattr(ck.layers, layer)(seed=seed, **kwargs).get_config()
    assert c_cfg == k_cfg  # with Keras's float32 DTypePolicy
