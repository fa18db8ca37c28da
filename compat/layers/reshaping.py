"""``keras.layers.Reshape`` (Keras's channels-last element order)."""

from __future__ import annotations

import math
from typing import Any

import torch

from compat.layers.base import Layer, Shape


class Reshape(Layer):
    """Reshapes each sample to ``target_shape`` (one entry may be -1), in Keras's
    channels-last order, whatever the internal layout of 4-D tensors."""

    def __init__(self, target_shape: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        target = tuple(int(d) for d in target_shape)
        if sum(d == -1 for d in target) > 1 or any(d == 0 or d < -1 for d in target):
            raise ValueError(
                "The `target_shape` argument must be a tuple of positive integers with at "
                f"most one -1. Received: target_shape={target_shape}"
            )
        self.target_shape = target

    def _resolved(self, input_shape: Shape) -> tuple[int | None, ...]:
        dims = input_shape[1:]
        known = math.prod(d for d in self.target_shape if d != -1)
        if None in dims:
            size = None
        else:
            size = int(math.prod(dims))
            if (-1 in self.target_shape and size % known) or (
                -1 not in self.target_shape and size != known
            ):
                raise ValueError(
                    f"The total size of the tensor must be unchanged. Received: "
                    f"input_shape={input_shape}, target_shape={self.target_shape}"
                )
        return tuple(
            (None if size is None else size // known) if d == -1 else d for d in self.target_shape
        )

    def _check_input_shape(self, input_shape: Shape) -> None:
        self._resolved(input_shape)

    def build(self, input_shape: Shape) -> None:
        self._resolved(input_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:  # internal NCHW -> Keras NHWC order
            x = x.permute(0, 2, 3, 1)
        x = x.reshape(x.shape[0], *self.target_shape)
        if x.ndim == 4:
            x = x.permute(0, 3, 1, 2)
        return x

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return (input_shape[0], *self._resolved(input_shape))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "target_shape": self.target_shape}


__all__ = ["Reshape"]
