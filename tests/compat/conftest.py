"""Fixtures for compat tests; real Keras 3 (torch backend) is the oracle."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ["KERAS_BACKEND"] = "torch"

import numpy as np
import pytest

import compat

REFERENCE = Path(__file__).parents[1] / "data" / "keras_reference"


@pytest.fixture
def keras():
    """Real Keras 3.15.1 on the torch backend, fresh session."""
    import keras as real_keras

    real_keras.backend.clear_session()
    real_keras.utils.set_random_seed(0)
    return real_keras


@pytest.fixture
def ck():
    """``import compat as keras`` with a fresh naming session."""
    compat.backend.clear_session()
    compat.utils.set_random_seed(0)
    return compat


@pytest.fixture
def reference():
    def load(name: str) -> dict:
        return json.loads((REFERENCE / f"{name}.json").read_text())

    return load


@pytest.fixture
def images():
    def make(n: int, size: int, classes: int = 3, seed: int = 0):
        rng = np.random.default_rng(seed)
        x = rng.uniform(0, 1, size=(n, size, size, 3)).astype("float32")
        y = np.eye(classes, dtype="float32")[rng.integers(0, classes, n)]
        return x, y

    return make
