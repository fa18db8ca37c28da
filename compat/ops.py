"""``keras.ops``: the functions transfer-learning tutorials call, on arrays, torch tensors
and symbolic ``KerasTensor``s (inside a functional model they become a layer of the graph,
as in Keras). Anything else raises ``NotImplementedError`` naming the function.

Images are channels-last here, as at every compat boundary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from compat import backend
from compat.graph import KerasTensor
from compat.layers.base import Layer, Shape

_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "bool": torch.bool,
}


class Operation(Layer):
    """A ``keras.ops`` function applied to symbolic inputs: one node of the graph. ``fn``
    works on Keras-layout (channels-last) torch tensors."""

    def __init__(self, fn: Callable[..., torch.Tensor], name: str) -> None:
        super().__init__(name=backend.unique_name(name))
        self.fn = fn

    def forward(self, x: Any) -> Any:
        xs = x if isinstance(x, list) else [x]
        out = self.fn(*[backend.to_keras(t) for t in xs])
        return backend.to_internal(out)

    def compute_output_shape(self, input_shape: Any) -> Shape:
        shapes = input_shape if isinstance(input_shape, list) else [input_shape]
        fakes = [torch.zeros((2, *[1 if d is None else d for d in s[1:]])) for s in shapes]
        out = self.fn(*fakes)
        dims = list(out.shape[1:])
        known = [s for s in shapes if len(s) == out.ndim]
        for i, d in enumerate(dims, start=1):
            if known and any(s[i] is None for s in known):
                dims[i - 1] = None if d == 1 else d
        return (None, *dims)


def _apply(name: str, fn: Callable[..., torch.Tensor], *inputs: Any) -> Any:
    """Run ``fn`` eagerly on tensors / arrays, or add it to the graph for KerasTensors."""
    if any(isinstance(t, KerasTensor) for t in inputs):
        if not all(isinstance(t, KerasTensor) for t in inputs):
            consts = [None if isinstance(t, KerasTensor) else convert_to_tensor(t) for t in inputs]
            symbolic = [t for t in inputs if isinstance(t, KerasTensor)]

            def bound(*xs: torch.Tensor) -> torch.Tensor:
                it = iter(xs)
                return fn(*[next(it) if c is None else c.to(xs[0].device) for c in consts])

            return Operation(bound, name)(symbolic if len(symbolic) > 1 else symbolic[0])
        return Operation(fn, name)(list(inputs) if len(inputs) > 1 else inputs[0])
    return fn(*[convert_to_tensor(t) for t in inputs])


def convert_to_tensor(x: Any, dtype: Any = None, sparse: Any = None, ragged: Any = None):
    if sparse or ragged:
        raise NotImplementedError("convert_to_tensor(sparse=True / ragged=True)")
    if isinstance(x, KerasTensor):
        raise TypeError("A symbolic KerasTensor has no value; use it inside a model.")
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if dtype is None and t.dtype == torch.float64:
        t = t.float()
    return t if dtype is None else t.to(_dtype(dtype))


def convert_to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, KerasTensor):
        raise TypeError("A symbolic KerasTensor has no value; call model.predict() instead.")
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _dtype(dtype: Any) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name not in _DTYPES:
        raise ValueError(f"Invalid dtype: {dtype}")
    return _DTYPES[name]


def cast(x: Any, dtype: Any) -> Any:
    target = _dtype(dtype)
    return _apply("cast", lambda t: t.to(target), x)


def one_hot(x: Any, num_classes: int, axis: int = -1, dtype: Any = None, sparse: bool = False):
    if sparse or axis != -1:
        raise NotImplementedError("one_hot(axis != -1 or sparse=True)")
    target = _dtype(dtype or "float32")
    return _apply("one_hot", lambda t: F.one_hot(t.long(), num_classes).to(target), x)


def argmax(x: Any, axis: int | None = None, keepdims: bool = False) -> Any:
    def fn(t: torch.Tensor) -> torch.Tensor:
        if axis is None:
            out = t.flatten().argmax()
            return out.reshape([1] * t.ndim) if keepdims else out
        return t.argmax(dim=axis, keepdim=keepdims).to(torch.int32)

    return _apply("argmax", fn, x)


def expand_dims(x: Any, axis: int) -> Any:
    return _apply("expand_dims", lambda t: t.unsqueeze(axis), x)


def add(x1: Any, x2: Any) -> Any:
    return _apply("add", torch.add, x1, x2)


def subtract(x1: Any, x2: Any) -> Any:
    return _apply("subtract", torch.subtract, x1, x2)


def multiply(x1: Any, x2: Any) -> Any:
    return _apply("multiply", torch.multiply, x1, x2)


def divide(x1: Any, x2: Any) -> Any:
    return _apply("divide", lambda a, b: torch.divide(a.float(), b), x1, x2)


class _Image:
    """``keras.ops.image``."""

    @staticmethod
    def resize(
        images: Any,
        size: tuple[int, int],
        interpolation: str = "bilinear",
        antialias: bool = False,
        crop_to_aspect_ratio: bool = False,
        pad_to_aspect_ratio: bool = False,
        fill_mode: str = "constant",
        fill_value: float = 0.0,
        data_format: str | None = None,
    ) -> Any:
        from compat.layers.preprocessing import Resizing

        layer = Resizing(
            size[0],
            size[1],
            interpolation=interpolation,
            crop_to_aspect_ratio=crop_to_aspect_ratio,
            pad_to_aspect_ratio=pad_to_aspect_ratio,
            antialias=antialias,
            data_format=data_format,
        )

        def fn(t: torch.Tensor) -> torch.Tensor:
            single = t.ndim == 3
            x = (t[None] if single else t).float().permute(0, 3, 1, 2)
            out = layer.forward(x).permute(0, 2, 3, 1)
            return out[0] if single else out

        return _apply("resize", fn, images)

    def __getattr__(self, name: str) -> Any:
        raise NotImplementedError(f"compat.ops.image.{name} is not implemented.")


image = _Image()

__all__ = [
    "add",
    "argmax",
    "cast",
    "convert_to_numpy",
    "convert_to_tensor",
    "divide",
    "expand_dims",
    "image",
    "multiply",
    "one_hot",
    "subtract",
]


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    raise NotImplementedError(
        f"compat.ops.{name} is not implemented. Supported: {', '.join(__all__)}"
    )
