"""Merge layers: Add, Concatenate."""

from __future__ import annotations

from typing import Any

import torch

from compat import backend
from compat.layers.base import Layer, Shape, batch_dim


def _shape_list(layer: Layer, input_shape: Any) -> list[Shape]:
    if not (isinstance(input_shape, list) and len(input_shape) >= 2):
        raise ValueError(
            f"A merge layer ('{layer.name}') should be called on a list of at least 2 inputs. "
            f"Received: input_shape={input_shape}"
        )
    return input_shape


class Add(Layer):
    def _check_input_shape(self, input_shape: Any) -> None:
        shapes = _shape_list(self, input_shape)
        # batch sizes may differ where one is unknown (``Input(batch_size=2)`` beside
        # ``Input(...)``): Keras broadcasts them
        batches = {s[0] for s in shapes} - {None}
        if any(tuple(s[1:]) != tuple(shapes[0][1:]) for s in shapes) or len(batches) > 1:
            raise ValueError(f"Inputs of '{self.name}' must have equal shapes. Received: {shapes}")

    def build(self, input_shape: Any) -> None:
        self._check_input_shape(input_shape)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out + x
        return out

    def compute_output_shape(self, input_shape: Any) -> Shape:
        return (batch_dim(input_shape), *input_shape[0][1:])


class Concatenate(Layer):
    def __init__(self, axis: int = -1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.axis = axis

    def build(self, input_shape: Any) -> None:
        self._check_input_shape(input_shape)

    def _check_input_shape(self, input_shape: Any) -> None:
        shapes = _shape_list(self, input_shape)
        rank = len(shapes[0])
        axis = self.axis % rank
        for s in shapes:
            if len(s) != rank or any(
                # as Keras: every axis but the concatenation one, the batch axis too, where
                # both sizes are known (None matches any size)
                len({a, b} - {None}) > 1
                for i, (a, b) in enumerate(zip(s, shapes[0], strict=True))
                if i != axis
            ):
                raise ValueError(
                    f"A `Concatenate` layer requires inputs with matching shapes except for "
                    f"the concatenation axis. Received: input_shape={shapes}"
                )

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, dim=backend.internal_axis(self.axis, xs[0].ndim))

    def compute_output_shape(self, input_shape: Any) -> Shape:
        rank = len(input_shape[0])
        axis = self.axis % rank
        out = list(input_shape[0])
        sizes = [s[axis] for s in input_shape]
        out[axis] = None if None in sizes else sum(sizes)
        return tuple(out)
