"""Session state (auto-generated layer names) and the NHWC <-> NCHW layout rules.

Keras layout (channels-last) is used at the API boundary; inside, rank-4 tensors are NCHW
(torch's layout). Tensors of other ranks have the same layout on both sides.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch

_COUNTERS: dict[str, int] = {}


def to_snake_case(name: str) -> str:
    """Keras's class-name -> default layer-name rule (``Conv2D`` -> ``conv2d``)."""
    name = re.sub(r"(.)([A-Z][a-z0-9]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def unique_name(prefix: str) -> str:
    """``prefix``, then ``prefix_1``, ``prefix_2``... as in a Keras session."""
    count = _COUNTERS.get(prefix, 0)
    _COUNTERS[prefix] = count + 1
    return prefix if count == 0 else f"{prefix}_{count}"


def clear_session() -> None:
    """Reset auto-generated layer names (``keras.backend.clear_session``)."""
    _COUNTERS.clear()


@contextlib.contextmanager
def canonical_names() -> Iterator[None]:
    """Name layers as a fresh Keras session would; afterwards the session counters move past
    the names used, so later layers do not collide with them."""
    global _COUNTERS
    saved = _COUNTERS
    _COUNTERS = {}
    try:
        yield
    finally:
        used, _COUNTERS = _COUNTERS, saved
        for key, count in used.items():
            _COUNTERS[key] = max(_COUNTERS.get(key, 0), count)


def image_data_format() -> str:
    return "channels_last"


def to_internal(x: torch.Tensor) -> torch.Tensor:
    """Keras layout -> internal layout (NHWC -> NCHW view for rank 4)."""
    return x.permute(0, 3, 1, 2) if x.ndim == 4 else x


def to_keras(x: torch.Tensor) -> torch.Tensor:
    """Internal layout -> Keras layout (NCHW -> NHWC view for rank 4)."""
    return x.permute(0, 2, 3, 1) if x.ndim == 4 else x


def internal_axis(axis: int, rank: int) -> int:
    """A Keras axis of a rank-``rank`` tensor -> the same axis in the internal layout."""
    axis = axis % rank
    if rank != 4:
        return axis
    return {0: 0, 1: 2, 2: 3, 3: 1}[axis]


def floatx() -> str:
    return "float32"
