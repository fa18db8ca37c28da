"""``fit`` / ``predict`` cases the red team found differing from Keras 3.15.1 (torch backend),
each run on real Keras and on compat with the same fixed weights: class weights (training
loss only, rounded labels, missing classes weigh 1), float64 inputs, a frozen model."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from tests.conftest import batches_per_epoch, two_batch_pydataset

X = np.random.RandomState(0).rand(10, 4).astype("float32")
Y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 2])
SOFT = np.array([0.9, 0.2, 0.6, 0.4, 1.0, 0.0, 0.7, 0.3, 0.5, 0.51], "float32")


def _model(
    mod, units: int = 3, act: str = "softmax", loss: str = "sparse_categorical_crossentropy"
):
    """A Dense model with fixed weights and learning rate 0 (losses depend on data only)."""
    m = mod.Sequential([mod.Input((4,)), mod.layers.Dense(units, activation=act)])
    m.compile(optimizer=mod.optimizers.SGD(0.0), loss=loss)
    m.set_weights(
        [np.linspace(-1, 1, 4 * units).reshape(4, units).astype("f4"), np.zeros(units, "f4")]
    )
    return m


def _history(h) -> dict[str, list[float]]:
    return {k: [round(float(v), 5) for v in vs] for k, vs in h.history.items()}


CASES = {
    # Keras: class_weight weighs the training loss only; val_loss equals evaluate()
    "val_loss_unweighted": lambda mod: (
        _history(
            _model(mod).fit(
                X,
                Y,
                batch_size=10,
                verbose=0,
                class_weight={0: 1.0, 1: 5.0, 2: 1.0},
                validation_data=(X, Y),
            )
        ),
        round(float(_model(mod).evaluate(X, Y, verbose=0)), 5),
    ),
    # a class missing from class_weight weighs 1.0 (compat raised IndexError)
    "missing_class": lambda mod: _history(
        _model(mod).fit(X, Y, batch_size=10, verbose=0, class_weight={0: 2.0, 1: 1.0})
    ),
    # string keys never match int labels in Keras: every weight is 1.0
    "string_keys": lambda mod: _history(
        _model(mod).fit(X, Y, batch_size=10, verbose=0, class_weight={"0": 2.0, "1": 1.0})
    ),
    # soft binary labels -> classes by np.round (0.6 -> 1, 0.5 -> 0), not truncation
    "soft_binary_labels": lambda mod: _history(
        _model(mod, 1, "sigmoid", "binary_crossentropy").fit(
            X, SOFT, batch_size=10, verbose=0, class_weight={0: 1.0, 1: 10.0}
        )
    ),
    # one-hot labels -> classes by argmax
    "one_hot_labels": lambda mod: _history(
        _model(mod, loss="categorical_crossentropy").fit(
            X, np.eye(3, dtype="f4")[Y], batch_size=5, verbose=0, class_weight={2: 4.0}
        )
    ),
    # a PyDataset's batches are weighted per batch
    "pydataset": lambda mod: _history(
        _model(mod).fit(
            two_batch_pydataset(mod, X, Y), verbose=0, class_weight={1: 3.0}, validation_data=(X, Y)
        )
    ),
    # float64 inputs are cast to the model's float32 (compat raised torch's dtype error)
    "float64_tensor_fit": lambda mod: _history(
        _model(mod).fit(
            torch.tensor(X, dtype=torch.float64), torch.tensor(Y), batch_size=5, verbose=0
        )
    ),
    "float64_predict": lambda mod: (lambda p: (str(p.dtype), np.round(p, 5).tolist()))(
        _model(mod).predict(torch.tensor(X[:2], dtype=torch.float64), verbose=0)
    ),
    "float64_dataloader": lambda mod: _history(
        _model(mod).fit(
            torch.utils.data.DataLoader(
                torch.utils.data.TensorDataset(
                    torch.tensor(X, dtype=torch.float64), torch.tensor(Y)
                ),
                batch_size=5,
            ),
            verbose=0,
        )
    ),
    "float64_dataloader_predict": lambda mod: np.round(
        _model(mod).predict(
            torch.utils.data.DataLoader(torch.tensor(X, dtype=torch.float64), batch_size=4),
            verbose=0,
        ),
        5,
    ).tolist(),
}


def _run(mod, case: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CASES[case](mod)


@pytest.mark.parametrize("case", sorted(CASES))
def test_fit_matches_keras(keras, ck, case) -> None:
    assert _run(ck, case) == _run(keras, case)


def _frozen_after_compile(mod) -> tuple:
    m = mod.Sequential([mod.Input((4,)), mod.layers.Dense(3, name="d1"), mod.layers.Dense(2)])
    m.set_weights(
        [np.ones((4, 3), "f4"), np.zeros(3, "f4"), np.full((3, 2), 0.5, "f4"), np.zeros(2, "f4")]
    )
    m.compile(optimizer="sgd", loss="mse")
    m.trainable = False
    before = [w.copy() for w in m.get_weights()]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        h = m.fit(X[:4], np.ones((4, 2), "f4"), batch_size=2, epochs=2, verbose=0)
    unchanged = all(np.array_equal(a, b) for a, b in zip(before, m.get_weights(), strict=True))
    warned = any("does not have any trainable weights" in str(w.message) for w in caught)
    return _history(h), unchanged, len(m.trainable_weights), warned, int(m.optimizer.iterations)


def test_frozen_after_compile_trains_nothing_like_keras(keras, ck) -> None:
    """``model.trainable = False`` after ``compile``: Keras runs the epochs, reports the loss,
    warns and updates nothing (compat raised "optimizer got an empty parameter list")."""
    ours = _frozen_after_compile(ck)
    assert ours == _frozen_after_compile(keras)
    assert ours[1] and ours[3]


def _steps_run(mod, kind: str) -> tuple:
    """Batches per epoch, per-epoch losses, PyDataset indices fetched and "ran out of data"
    warnings for ``fit(steps_per_epoch=2, epochs=3)`` on 5 batches, unshuffled."""
    fetched: list[int] = []
    count, counts = batches_per_epoch(mod)

    class Batches(mod.utils.PyDataset):
        def __len__(self) -> int:
            return 5

        def __getitem__(self, i: int):
            fetched.append(i)
            return X[i * 2 : i * 2 + 2], Y[i * 2 : i * 2 + 2]

    def generator(n: int):
        for i in range(n):
            yield X[i * 2 % 10 : i * 2 % 10 + 2], Y[i * 2 % 10 : i * 2 % 10 + 2]

    data = {
        "arrays": lambda: (X, Y),
        "pydataset": lambda: (Batches(),),
        "generator": lambda: (generator(100),),
        "short_generator": lambda: (generator(5),),
    }[kind]()
    m = _model(mod)
    m.compile(optimizer=mod.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        h = m.fit(
            *data,
            batch_size=2,
            steps_per_epoch=2,
            epochs=4,
            shuffle=False,
            verbose=0,
            callbacks=[count],
        )
    ran_out = sum("ran out of data" in str(w.message) for w in caught)
    return counts, _history(h), fetched, ran_out


@pytest.mark.parametrize("kind", ["arrays", "pydataset", "generator", "short_generator"])
def test_steps_per_epoch_continues_the_data_like_keras(keras, ck, kind) -> None:
    """Keras runs one pass of the data on across epochs: 5 batches at 2 steps an epoch are
    epochs of 2, 2, 1 (warned) and then a new pass; a generator is not restarted (compat
    used to restart every epoch, and replayed a generator's first two batches)."""
    ours, theirs = _steps_run(ck, kind), _steps_run(keras, kind)
    if kind == "pydataset":  # Keras first reads batch 0 once more to build its metrics
        assert theirs[2][0] == 0
        theirs = (*theirs[:2], theirs[2][1:], theirs[3])
    assert ours == theirs
