"""``keras.layers.Multiply``: element-wise product of inputs, broadcasting as Keras does."""

from __future__ import annotations

from typing import Any

import torch

from compat.layers.base import Layer, Shape


def _broadcast(shapes: list[Shape], name: str) -> Shape:
    rank = len(shapes[0])
    if any(len(s) != rank for s in shapes):
        raise ValueError(f"Inputs of '{name}' must have the same rank. Received: {shapes}")
    out = []
    for dims in zip(*shapes, strict=True):
        sizes = {d for d in dims if d != 1}
        if len(sizes - {None}) > 1:
            raise ValueError(
                f"Inputs of '{name}' have incompatible shapes for broadcasting: {shapes}"
            )
        known = sizes - {None}
        out.append(known.pop() if known else (None if None in sizes else 1))
    return tuple(out)


class Multiply(Layer):
    def _check_input_shape(self, input_shape: Any) -> None:
        if not (isinstance(input_shape, list) and len(input_shape) >= 2):
            raise ValueError(
                f"A merge layer ('{self.name}') should be called on a list of at least 2 "
                f"inputs. Received: input_shape={input_shape}"
            )
        _broadcast(input_shape, self.name)

    def build(self, input_shape: Any) -> None:
        self._check_input_shape(input_shape)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        out = xs[0]
        for x in xs[1:]:
            out = out * x
        return out

    def compute_output_shape(self, input_shape: Any) -> Shape:
        return _broadcast(input_shape, self.name)


__all__ = ["Multiply"]
