"""``keras.ops``: the functions transfer-learning tutorials call, on arrays, torch tensors
and symbolic ``KerasTensor``s (inside a functional model they become a layer of the graph,
as in Keras). Anything else raises ``NotImplementedError`` naming the function.

Images are channels-last here, as at every compat boundary.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from compat import backend
from compat.graph import KerasTensor
from compat.layers.base import Layer, Shape, batch_dim

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
        return (batch_dim(shapes), *dims)


class NumpyOperation(Layer):
    """A node of Keras's ``keras.src.ops.numpy`` arithmetic as Keras serialises it in a
    functional config: ``x + 3.0`` on a KerasTensor is an ``Add`` node called with
    ``(tensor, 3.0)``, ``x + y`` one called with two tensors (Keras's MobileNetV3 and ConvNeXt
    graphs). ``operands`` holds the call's positional arguments in order: ``None`` where a
    tensor goes (the layer's inputs, in order), a number for a constant. Like Keras's
    operations it is no layer of ``model.layers`` and holds no weights."""

    FUNCTIONS: dict[str, Callable[..., torch.Tensor]] = {
        "Add": operator.add,
        "Multiply": operator.mul,
    }
    _keras_operation = True

    def __init__(self, op: str, operands: list[Any] | None = None, *, name: str) -> None:
        if op not in self.FUNCTIONS:
            raise ValueError(
                f"Keras operation {op!r}: compat builds only {sorted(self.FUNCTIONS)} nodes."
            )
        super().__init__(name=name)
        self.op = op
        self.operands: list[Any] | None = None
        if operands is not None:
            self.set_operands(operands)

    def set_operands(self, operands: list[Any]) -> None:
        """The call's arguments (``None`` for each tensor, numbers for constants), fixed once."""
        ok = (
            isinstance(operands, list)
            and 1 <= len(operands) <= 2
            and any(v is None for v in operands)
            and all(v is None or isinstance(v, (int, float)) for v in operands)  # bools too
        )
        if not ok:
            raise ValueError(
                f"Keras operation '{self.name}' ({self.op}): expected two arguments, tensors "
                f"or numbers with at least one tensor; received {operands!r}."
            )
        if self.operands is not None and self.operands != operands:
            raise ValueError(
                f"Keras operation '{self.name}' is called with {operands!r} after "
                f"{self.operands!r}; compat's operation nodes keep one set of constants."
            )
        self.operands = list(operands)

    def _arguments(self, tensors: list[torch.Tensor]) -> list[Any]:
        if self.operands is None or len(tensors) != self.operands.count(None):
            raise ValueError(
                f"Keras operation '{self.name}' ({self.op}) with operands {self.operands!r} "
                f"received {len(tensors)} tensor(s)."
            )
        it = iter(tensors)
        # Keras converts a constant to the tensor's float type before the op; a Python number
        # beside a float tensor is computed in that type too, with no tensor made per call
        return [next(it) if v is None else float(v) for v in self.operands]

    def forward(self, x: Any) -> Any:
        xs = [backend.to_keras(t) for t in (x if isinstance(x, list) else [x])]
        return backend.to_internal(self.FUNCTIONS[self.op](*self._arguments(xs)))

    def compute_output_shape(self, input_shape: Any) -> Shape:
        return broadcast_shape(input_shape, f"Keras operation '{self.name}' ({self.op})")


class PadOperation(Layer):
    """Keras's ``Pad`` operation node (``keras.ops.pad(x, pad_width, constant_values=c)`` on a
    KerasTensor, as Keras serialises it): constant padding of every axis by its
    ``(before, after)`` pair, in Keras's layout. Like Keras's operations it is no layer of
    ``model.layers`` and holds no weights."""

    op = "Pad"
    _keras_operation = True

    def __init__(
        self,
        pad_width: Any,
        mode: str = "constant",
        constant_values: float | None = None,
        *,
        name: str,
    ) -> None:
        if mode != "constant":
            raise ValueError(
                f"Keras operation '{name}' (Pad): compat pads in mode 'constant' only. "
                f"Received: mode={mode!r}."
            )
        pairs = _pad_pairs(pad_width)
        if pairs is None:
            raise ValueError(
                f"Keras operation '{name}' (Pad): expected pad_width as an integer or "
                "(before, after) pairs of non-negative integers (one pair for every axis, or "
                f"one per axis; (n,) for (n, n)). Received: {pad_width!r}."
            )
        super().__init__(name=name)
        self.pad_width = pairs
        # as Keras writes it back: the argument as given (an int stays an int)
        self._written = pad_width if isinstance(pad_width, int) else [list(p) for p in pairs]
        if _is_pair(pad_width):
            self._written = list(pairs[0])
        self.mode = mode
        self.constant_values: float | None = None
        self.set_constant(constant_values)

    def set_constant(self, value: Any) -> None:
        """The call's ``constant_values`` (``None``: zeros), as Keras passes it to the node: a
        number (a bool or NumPy scalar too, as Keras's ``F.pad`` takes them)."""
        if isinstance(value, np.generic) and value.ndim == 0:
            value = value.item()
        if value is not None and not isinstance(value, (int, float)):
            raise ValueError(
                f"Keras operation '{self.name}' (Pad): constant_values must be a number or "
                f"None. Received: {value!r}."
            )
        self.constant_values = value

    def set_node_constant(self, value: Any) -> None:
        """``constant_values`` of a node read from a Keras file: one value for all the
        operation's nodes (compat's operation nodes keep one set of constants)."""
        previous = getattr(self, "_node_constant", ())
        if previous != () and not _same_number(previous, value):
            raise ValueError(
                f"Keras operation '{self.name}' (Pad) is called with constant_values={value!r} "
                f"after {previous!r}; compat's operation nodes keep one set of constants."
            )
        self.set_constant(value)
        self._node_constant = value

    def keras_node(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The node's config (beside its name) and call keyword arguments, as Keras writes them."""
        config = {"pad_width": self._written, "mode": self.mode}
        return config, {"constant_values": self.constant_values}

    def _pairs(self, rank: int) -> list[list[int]]:
        if len(self.pad_width) == 1:
            return self.pad_width * rank
        if len(self.pad_width) != rank:
            raise ValueError(
                f"Keras operation '{self.name}' (Pad): {len(self.pad_width)} (before, after) "
                f"pairs for a rank-{rank} tensor."
            )
        return self.pad_width

    def pad_keras_layout(self, t: torch.Tensor) -> torch.Tensor:
        """The padding of ``t`` (Keras's layout), its dtype kept."""
        flat = [n for pair in reversed(self._pairs(t.ndim)) for n in pair]  # F.pad: last axis first
        value = 0.0 if self.constant_values is None else float(self.constant_values)
        return F.pad(t, flat, value=value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return backend.to_internal(self.pad_keras_layout(backend.to_keras(x)))

    def compute_output_shape(self, input_shape: Any) -> Shape:
        pairs = self._pairs(len(input_shape))
        sizes = zip(input_shape, pairs, strict=True)
        return tuple(None if d is None else d + b + a for d, (b, a) in sizes)


def _is_pair(value: Any) -> bool:
    """``(before, after)`` of non-negative integers (NumPy's too), or ``(n,)`` for ``(n, n)``."""
    return (
        isinstance(value, (list, tuple))
        and len(value) in (1, 2)
        and all(_is_width(n) for n in value)
    )


def _same_number(a: Any, b: Any) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)


def _is_width(n: Any) -> bool:
    return isinstance(n, (int, np.integer)) and not isinstance(n, (bool, np.bool_)) and n >= 0


def _pad_pairs(pad_width: Any) -> list[list[int]] | None:
    """Keras's ``pad_width`` forms as ``[before, after]`` pairs: ``n``, ``(before, after)``
    (one pair for every axis), or one pair (or ``(n,)``) per axis; ``None`` if not one."""
    if _is_width(pad_width):
        return [[int(pad_width), int(pad_width)]]
    if isinstance(pad_width, (list, tuple)) and len(pad_width) == 2 and _is_pair(pad_width):
        return [[int(n) for n in pad_width]]
    if not isinstance(pad_width, (list, tuple)) or not pad_width:
        return None
    if not all(map(_is_pair, pad_width)) or len({len(p) for p in pad_width}) != 1:
        return None
    return [[int(p[0]), int(p[-1])] for p in pad_width]


def broadcast_shape(input_shape: Any, what: str) -> Shape:
    """The NumPy broadcast of one Keras shape or a list of them (``None``: unknown size);
    a ``ValueError`` naming ``what`` when they do not broadcast."""
    shapes = [tuple(s) for s in (input_shape if isinstance(input_shape, list) else [input_shape])]
    rank = max(len(s) for s in shapes)
    padded = [(1,) * (rank - len(s)) + s for s in shapes]
    out = []
    for dims in zip(*padded, strict=True):
        known = {d for d in dims if d is not None and d != 1}
        if len(known) > 1:
            raise ValueError(f"{what}: shapes {shapes} do not broadcast.")
        if known:
            out.append(known.pop())
        else:
            out.append(None if None in dims else 1)
    return tuple(out)


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


def pad(x: Any, pad_width: Any, mode: str = "constant", constant_values: Any = None) -> Any:
    """``keras.ops.pad``: constant padding by ``(before, after)`` per axis (one pair, or an
    int, for every axis); on a KerasTensor, Keras's ``Pad`` operation node."""
    op = PadOperation(pad_width, mode, constant_values, name=backend.unique_name("pad"))
    if isinstance(x, KerasTensor):
        return op(x)
    # Keras keeps an array's or tensor's dtype (float64 too): no float32 default here
    t = x if isinstance(x, torch.Tensor) else convert_to_tensor(x, dtype=np.asarray(x).dtype)
    return op.pad_keras_layout(t)


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
