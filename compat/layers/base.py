"""The Layer base class: a ``torch.nn.Module`` with Keras's naming, trainability, weights
and symbolic (functional) calls. Inside, rank-4 tensors are NCHW; at the boundary NHWC."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from compat import backend
from compat.graph import KerasTensor, Node
from ftlight.models.freezing import INFERENCE_ATTR

Shape = tuple[int | None, ...]


class Variable:
    """A Keras-style view of one torch parameter or buffer, in Keras's shape."""

    def __init__(
        self,
        layer: Layer,
        name: str,
        module: nn.Module,
        attr: str,
        *,
        trainable: bool,
        to_keras: Callable[[torch.Tensor], torch.Tensor] | None = None,
        from_keras: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.layer = layer
        self.name = name
        self._module = module
        self._attr = attr
        self._trainable = trainable
        self._to_keras = to_keras or (lambda t: t)
        self._from_keras = from_keras or (lambda t: t)

    @property
    def value(self) -> torch.Tensor:
        return getattr(self._module, self._attr)

    @property
    def trainable(self) -> bool:
        return self._trainable and self.layer.trainable

    @property
    def path(self) -> str:
        return f"{self.layer.name}/{self.name}"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._to_keras(self.value.detach()).shape)

    def numpy(self) -> np.ndarray:
        return self._to_keras(self.value.detach()).cpu().numpy().copy()

    def assign(self, value: Any) -> None:
        new = torch.as_tensor(np.asarray(value), dtype=self.value.dtype)
        if tuple(new.shape) != self.shape:
            raise ValueError(
                f"Cannot assign a value of shape {tuple(new.shape)} to variable {self.path} of "
                f"shape {self.shape}."
            )
        with torch.no_grad():
            self.value.copy_(self._from_keras(new).to(self.value.device))

    def __repr__(self) -> str:
        return f"<Variable path={self.path}, shape={self.shape}, trainable={self.trainable}>"


class SeedGenerator:
    """The random draws of one layer. With a ``seed`` the layer owns a ``torch.Generator`` per
    device, seeded from it: two layers built with the same seed draw the same sequence, and no
    other random draw (``torch.manual_seed``, other layers) changes it, as Keras's seeded
    layers. The numbers themselves are torch's, not Keras's (Keras derives them differently
    from its seed state). ``seed=None`` draws from torch's global RNG (``set_random_seed``).
    """

    def __init__(self, seed: int | None) -> None:
        if seed is not None and not isinstance(seed, int):  # Keras's check (bool is an int)
            raise ValueError(f"`seed` must be an integer or None. Received: seed={seed!r}")
        self.seed = seed
        self._generators: dict[str, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        key = str(device)
        if key not in self._generators:
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            self._generators[key] = gen
        return self._generators[key]

    def rand(self, *size: int, device: torch.device) -> torch.Tensor:
        """Uniform ``[0, 1)`` draws of shape ``size`` on ``device``."""
        return torch.rand(size, generator=self.generator(device), device=device)

    def randint(self, low: int, high: int) -> int:
        """One integer in ``[low, high)`` (drawn on the CPU)."""
        cpu = torch.device("cpu")
        return int(torch.randint(low, high, (), generator=self.generator(cpu)))


def conv_kernel_to_keras(w: torch.Tensor) -> torch.Tensor:
    return w.permute(2, 3, 1, 0)


def conv_kernel_from_keras(w: torch.Tensor) -> torch.Tensor:
    return w.permute(3, 2, 0, 1)


def _as_tensor(x: Any) -> torch.Tensor:
    """An input as a float tensor (Keras casts integer inputs to the float compute dtype)."""
    if isinstance(x, torch.Tensor):
        return x if x.is_floating_point() else x.float()
    arr = np.asarray(x)
    if arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr))


def set_modes(root: nn.Module, training: bool | None) -> None:
    """``root.train(training)``, then keep frozen / ``training=False`` parts in inference mode.

    ``training=None`` is Keras's "not given": each layer then uses the default of its own
    ``call``, which is ``True`` for augmentation layers (they augment when called directly)
    and ``False`` for the rest.
    """
    root.train(bool(training))
    if training is None:
        forced = {id(m) for m in inference_modules(root)}
        for module in root.modules():
            if getattr(module, "_training_default", False) and id(module) not in forced:
                module.train(True)
    elif training:
        for module in inference_modules(root):
            module.training = False


def inference_modules(root: nn.Module) -> list[nn.Module]:
    """Modules that must stay in inference mode while ``root`` trains: everything under a
    layer called with ``training=False``, and the BatchNormalization of frozen layers."""
    found: list[nn.Module] = []

    def visit(module: nn.Module, forced: bool) -> None:
        forced = forced or bool(getattr(module, INFERENCE_ATTR, False))
        if forced:
            found.extend(module.modules())
            return
        if isinstance(module, Layer) and module._frozen_bn_modules():
            found.extend(module._frozen_bn_modules())
        for child in module.children():
            visit(child, False)

    visit(root, False)
    return list({id(m): m for m in found}.values())


class Layer(nn.Module):
    """Base class of compat layers (``keras.layers.Layer``)."""

    _training_default = False  # Keras's default for ``call(..., training=...)``

    def __init__(
        self,
        *,
        name: str | None = None,
        trainable: bool = True,
        dtype: Any = None,
        input_shape: Shape | None = None,
        batch_input_shape: Shape | None = None,
        input_dim: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if kwargs:
            raise TypeError(
                f"{type(self).__name__}: unrecognized keyword arguments: {sorted(kwargs)}"
            )
        if dtype not in (None, "float32", torch.float32):
            raise NotImplementedError(
                f"{type(self).__name__}(dtype={dtype!r}): only float32 layers are supported; "
                "use compat.mixed_precision.set_global_policy for mixed precision."
            )
        if name is None:
            name = backend.unique_name(backend.to_snake_case(type(self).__name__))
        if not isinstance(name, str) or not name:
            raise TypeError(f"Layer name must be a non-empty string. Received: name={name!r}")
        self.name = name
        self._trainable = bool(trainable)
        self._inbound_nodes: list[Node] = []
        self.built = False
        self._build_shape: Any = None
        if input_dim is not None and input_shape is None:
            input_shape = (input_dim,)
        if batch_input_shape is not None:
            self._batch_input_shape = tuple(batch_input_shape)
        elif input_shape is not None:
            self._batch_input_shape = (None, *tuple(input_shape))
        else:
            self._batch_input_shape = None

    # ----- structure and trainability -------------------------------------------------
    def _sublayers(self) -> list[Layer]:
        out: list[Layer] = []

        def visit(module: nn.Module) -> None:
            for child in module.children():
                if isinstance(child, Layer):
                    out.append(child)
                else:
                    visit(child)

        visit(self)
        return out

    @property
    def trainable(self) -> bool:
        return self._trainable

    @trainable.setter
    def trainable(self, value: bool) -> None:
        self._trainable = bool(value)
        for layer in self._sublayers():
            layer.trainable = value

    def _own_variables(self) -> list[Variable]:
        return []

    def _frozen_bn_modules(self) -> list[nn.Module]:
        return []

    def _iter_weights(self, kind: str) -> Iterator[Variable]:
        own = self._own_variables()
        if kind in ("all", "trainable") and (kind == "all" or self.trainable):
            yield from (v for v in own if v._trainable)
        if kind in ("all", "non_trainable"):
            yield from (v for v in own if not v._trainable or not self.trainable)
        for layer in self._sublayers():
            if kind == "trainable" and not self.trainable:
                break
            if kind == "non_trainable" and not self.trainable:
                yield from layer._iter_weights("all")
            else:
                yield from layer._iter_weights(kind)

    def _unique(self, kind: str) -> list[Variable]:
        seen, out = set(), []
        for v in self._iter_weights(kind):
            key = (id(v._module), v._attr)
            if key not in seen:
                seen.add(key)
                out.append(v)
        return out

    @property
    def weights(self) -> list[Variable]:
        return self._unique("all")

    @property
    def trainable_weights(self) -> list[Variable]:
        return self._unique("trainable")

    @property
    def non_trainable_weights(self) -> list[Variable]:
        return self._unique("non_trainable")

    @property
    def variables(self) -> list[Variable]:
        return self.weights

    @property
    def trainable_variables(self) -> list[Variable]:
        return self.trainable_weights

    @property
    def non_trainable_variables(self) -> list[Variable]:
        return self.non_trainable_weights

    def count_params(self) -> int:
        if not self.built:
            raise ValueError(
                f"You tried to call `count_params` on layer '{self.name}', but the layer isn't "
                "built. You can build it manually via: `layer.build(input_shape)`."
            )
        return int(sum(int(np.prod(v.shape)) for v in self.weights))

    def get_weights(self) -> list[np.ndarray]:
        return [v.numpy() for v in self.weights]

    def set_weights(self, weights: list[Any]) -> None:
        own = self.weights
        if len(weights) != len(own):
            raise ValueError(
                f"Layer '{self.name}' expected {len(own)} weights, but received "
                f"{len(weights)} weights. Expected shapes: {[v.shape for v in own]}"
            )
        for var, value in zip(own, weights, strict=True):
            arr = np.asarray(value)
            if tuple(arr.shape) != var.shape:
                raise ValueError(
                    f"Layer '{self.name}' weight shape {var.shape} is not compatible with "
                    f"provided weight shape {tuple(arr.shape)} (variable {var.path})."
                )
            var.assign(arr)

    def regularization_losses(self) -> list[torch.Tensor]:
        return []

    # ----- building and shapes -------------------------------------------------------
    def build(self, input_shape: Any) -> None:
        """Create the torch modules for inputs of Keras shape ``input_shape``."""

    def _maybe_build(self, input_shape: Any) -> None:
        if not self.built:
            self.build(input_shape)
            self.built = True
            self._build_shape = input_shape
        else:
            self._check_input_shape(input_shape)

    def _check_input_shape(self, input_shape: Any) -> None:
        """Raise ``ValueError`` (saying what was received and expected) on incompatible input."""

    def compute_output_shape(self, input_shape: Any) -> Any:
        """Keras-layout output shape; the default traces ``forward`` with fake tensors."""
        from torch._subclasses.fake_tensor import FakeTensorMode

        batch = batch_dim(input_shape)

        def fake(shape: Shape) -> torch.Tensor:
            internal = _internal_shape((batch or 2, *shape[1:]))
            return torch.empty(internal)

        saved = {m: m.training for m in self.modules()}
        self.eval()
        try:
            with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():
                if _is_shape_list(input_shape):
                    out = self.forward([fake(s) for s in input_shape])
                else:
                    out = self.forward(fake(input_shape))
        finally:
            for m, flag in saved.items():
                m.training = flag
        shape = tuple(out.shape)
        if len(shape) == 4:
            shape = (shape[0], shape[2], shape[3], shape[1])
        return (batch, *shape[1:])

    # ----- calling -------------------------------------------------------------------
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        training = kwargs.pop("training", None)
        if "mask" in kwargs:
            raise NotImplementedError(f"{type(self).__name__}: masking (mask=...)")
        if kwargs:
            raise TypeError(f"{self.name}: unexpected call arguments {sorted(kwargs)}")
        inputs = args[0] if len(args) == 1 else list(args)
        flat = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        symbolic = [isinstance(t, KerasTensor) for t in flat]
        if any(symbolic):
            if not all(symbolic):
                raise TypeError(
                    f"Layer '{self.name}' received a mix of symbolic KerasTensors and "
                    "concrete values; pass only KerasTensors when building a model."
                )
            return self._symbolic_call(inputs, flat, training)
        return self._eager_call(inputs, training)

    def _symbolic_call(self, inputs: Any, flat: list[KerasTensor], training: bool | None):
        multi = isinstance(inputs, (list, tuple))
        shape = [t.shape for t in flat] if multi else flat[0].shape
        self._maybe_build(shape)
        out_shape = self.compute_output_shape(shape)
        out = KerasTensor(out_shape, name=self.name)
        Node(self, flat, [out], multi_input=multi, training=training)
        if training is False:
            setattr(self, INFERENCE_ATTR, True)
        return out

    def _eager_call(self, inputs: Any, training: bool | None) -> torch.Tensor:
        multi = isinstance(inputs, (list, tuple))
        tensors = [_as_tensor(t) for t in (inputs if multi else [inputs])]
        shapes = [(None, *t.shape[1:]) for t in tensors]
        self._maybe_build(shapes if multi else shapes[0])
        internal = [backend.to_internal(t) for t in tensors]
        saved = {m: m.training for m in self.modules()}
        set_modes(self, training)
        try:
            out = self.forward(internal if multi else internal[0])
        finally:
            for m, flag in saved.items():
                m.training = flag
        if isinstance(out, (list, tuple)):  # a multi-output model
            return [backend.to_keras(o) for o in out]
        return backend.to_keras(out)

    def forward(self, x: Any) -> Any:  # internal layout
        raise NotImplementedError(f"{type(self).__name__} does not implement forward().")

    # ----- graph access --------------------------------------------------------------
    def _single_node(self, what: str) -> Node:
        if not self._inbound_nodes:
            raise AttributeError(
                f"Layer '{self.name}' has never been called and thus has no defined {what}."
            )
        if len(self._inbound_nodes) > 1:
            raise AttributeError(
                f"Layer '{self.name}' has multiple inbound nodes; {what} is ill-defined."
            )
        return self._inbound_nodes[0]

    @property
    def input(self) -> Any:
        node = self._single_node("input")
        return node.input_tensors if node.multi_input else node.input_tensors[0]

    @property
    def output(self) -> KerasTensor:
        return self._single_node("output").outputs[0]

    def get_config(self) -> dict[str, Any]:
        """Keras's base config: name, trainable and the (float32) ``DTypePolicy``."""
        from compat.keras_format import DTYPE_POLICY

        return {"name": self.name, "trainable": self.trainable, "dtype": dict(DTYPE_POLICY)}

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


def batch_dim(input_shape: Any) -> int | None:
    """The batch size a layer's output has for inputs of Keras shape(s) ``input_shape``:
    the one size the inputs that know theirs agree on (``Input(batch_size=2)``), else
    ``None`` (Keras's merging layers broadcast it the same way)."""
    shapes = input_shape if _is_shape_list(input_shape) else [input_shape]
    known = {s[0] for s in shapes if len(s) and s[0] is not None}
    return known.pop() if len(known) == 1 else None


def _is_shape_list(shape: Any) -> bool:
    return isinstance(shape, list) and bool(shape) and isinstance(shape[0], (tuple, list))


def _internal_shape(shape: tuple) -> tuple:
    if len(shape) == 4:
        return (shape[0], shape[3], shape[1], shape[2])
    return tuple(shape)
