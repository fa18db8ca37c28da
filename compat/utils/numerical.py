"""``keras.utils.to_categorical`` and ``set_random_seed``."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch


def to_categorical(x: Any, num_classes: int | None = None) -> np.ndarray:
    """Integer labels -> one-hot float32 array (``keras.utils.to_categorical``)."""
    x = np.asarray(x, dtype="int64")
    if x.ndim > 1 and x.shape[-1] == 1:
        x = x[..., 0]
    if num_classes is None:
        num_classes = int(x.max()) + 1
    if x.size and (x.min() < 0 or x.max() >= num_classes):
        raise ValueError(
            f"to_categorical: labels must be in [0, {num_classes}). Received "
            f"min={x.min()}, max={x.max()}"
        )
    return np.eye(num_classes, dtype="float32")[x]


def set_random_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (via ``lightning.seed_everything``)."""
    if not isinstance(seed, int):
        raise ValueError(f"Expected `seed` argument to be an integer. Received: seed={seed!r}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    L.seed_everything(seed, verbose=False)
