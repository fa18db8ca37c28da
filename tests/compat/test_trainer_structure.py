"""The trainer split mirrors Keras: ``Model`` inherits a trainer mixin holding a typed
``CompileConfig``; compile state is the same as Keras's where Keras exposes it."""

from __future__ import annotations

import numpy as np
import pytest

from compat.engine import TorchTrainer
from compat.trainer import CompileConfig, Trainer


def _model(K):
    return K.Sequential([K.Input((4,)), K.layers.Dense(2, name="d")])


def test_model_inherits_the_trainers(ck):
    assert issubclass(ck.Model, TorchTrainer) and issubclass(TorchTrainer, Trainer)
    assert issubclass(ck.Sequential, Trainer)
    mro = ck.Model.__mro__
    assert mro.index(Trainer) < mro.index(ck.Layer)  # Keras: class Model(Trainer, Layer)


def test_compiled_flag_and_optimizer_like_keras(keras, ck):
    seen = []
    for K in (keras, ck):
        m = _model(K)
        before = m.compiled
        m.compile(optimizer="adam", loss="mse", metrics=["accuracy"])
        seen.append((before, m.compiled, type(m.optimizer).__name__))
    assert seen[1] == seen[0]
    config = ck.models.Model._require_compiled(m, "fit")
    assert isinstance(config, CompileConfig)
    assert config.compile_kwargs() == {
        "optimizer": "adam",
        "loss": "mse",
        "metrics": ["accuracy"],
        "cache_features": True,
    }


def test_no_optimizer_before_compile_as_in_keras(keras, ck, tmp_path):
    seen = []
    for K in (keras, ck):
        m = _model(K)
        with pytest.raises(AttributeError) as err:
            m.optimizer  # noqa: B018
        seen.append((hasattr(m, "optimizer"), str(err.value)))
    assert seen[1] == seen[0]
    m = _model(ck)
    m.save(tmp_path / "uncompiled.keras")  # saving an uncompiled model needs no optimizer
    assert not hasattr(m, "optimizer")
    assert not hasattr(ck.models.load_model(tmp_path / "uncompiled.keras"), "optimizer")


def test_saved_compile_config_is_restored(ck, tmp_path):
    m = _model(ck)
    m.compile(
        optimizer=ck.optimizers.SGD(0.05), loss="mse", metrics=["accuracy"], cache_features=False
    )
    x, y = np.ones((8, 4), "float32"), np.zeros((8, 2), "float32")
    m.fit(x, y, verbose=0)
    m.save(tmp_path / "m.model")
    loaded = ck.models.load_model(tmp_path / "m.model")
    assert loaded.compiled and loaded._compile_config.cache_features is False
    assert loaded._compile_config.metrics == ["accuracy"]
    np.testing.assert_allclose(float(loaded.optimizer.learning_rate), 0.05, rtol=1e-6)
    assert m._compile_config is not None  # saving detaches it only while writing
    np.testing.assert_allclose(
        loaded.evaluate(x, y, verbose=0), m.evaluate(x, y, verbose=0), rtol=1e-6
    )
