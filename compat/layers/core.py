"""Core layers: Input, Dense, Dropout, BatchNormalization, Flatten, Activation, pooling."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from compat import activations, regularizers
from compat.graph import KerasTensor, Node
from compat.layers.base import Layer, SeedGenerator, Shape, Variable

# ----- inputs --------------------------------------------------------------------------


class InputLayer(Layer):
    """The entry point of a model; holds the input shape (batch dimension excluded)."""

    def __init__(
        self,
        shape: Shape | None = None,
        batch_size: int | None = None,
        dtype: Any = None,
        sparse: bool | None = None,
        batch_shape: Shape | None = None,
        input_tensor: Any = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        if "input_shape" in kwargs and shape is None:
            shape = kwargs.pop("input_shape")
        super().__init__(name=name, dtype=dtype, **kwargs)
        if sparse:
            raise NotImplementedError("InputLayer(sparse=True): sparse inputs")
        if input_tensor is not None:
            raise NotImplementedError("InputLayer(input_tensor=...): wrapping existing tensors")
        if batch_shape is None:
            if shape is None:
                raise ValueError("You must pass a `shape` argument to Input/InputLayer.")
            if isinstance(shape, int):
                shape = (shape,)
            batch_shape = (batch_size, *tuple(shape))
        self.batch_shape = tuple(None if d is None else int(d) for d in batch_shape)
        self.built = True
        out = KerasTensor(self.batch_shape, name=self.name)
        Node(self, [], [out])
        self._output_tensor = out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "batch_shape": self.batch_shape}


def Input(
    shape: Shape | None = None,
    batch_size: int | None = None,
    dtype: Any = None,
    sparse: bool | None = None,
    batch_shape: Shape | None = None,
    name: str | None = None,
    tensor: Any = None,
) -> KerasTensor:
    """A symbolic input (``keras.Input``): ``shape`` excludes the batch dimension."""
    layer = InputLayer(
        shape=shape,
        batch_size=batch_size,
        dtype=dtype,
        sparse=sparse,
        batch_shape=batch_shape,
        input_tensor=tensor,
        name=name,
    )
    return layer._output_tensor


# ----- dense & co ----------------------------------------------------------------------


def _init_from_config(
    weight: torch.Tensor, initializer: dict[str, Any], fan_in: int, fan_out: int
) -> None:
    """Keras's ``VarianceScaling`` or ``Constant`` from its config (as a Keras file gives
    it, checked by ``compat.keras_files``)."""
    config = initializer.get("config") or {}
    if initializer.get("class_name") == "Constant":
        weight.fill_(float(config.get("value", 0.0)))
        return
    scale, mode = float(config.get("scale", 1.0)), config.get("mode", "fan_in")
    fan = {"fan_in": fan_in, "fan_out": fan_out}.get(mode, (fan_in + fan_out) / 2.0)
    scale /= max(1.0, fan)
    distribution = config.get("distribution", "truncated_normal")
    if distribution in ("truncated_normal", "normal"):
        std = math.sqrt(scale) / 0.87962566103423978
        nn.init.trunc_normal_(weight, 0.0, std, -2 * std, 2 * std)
    elif distribution == "untruncated_normal":
        weight.normal_(0.0, math.sqrt(scale))
    else:
        limit = math.sqrt(3.0 * scale)
        weight.uniform_(-limit, limit)


def _init_weight(weight: torch.Tensor, initializer: Any, fan_in: int, fan_out: int) -> None:
    name = initializer if isinstance(initializer, str) else None
    with torch.no_grad():
        if isinstance(initializer, dict) and initializer.get("class_name") in (
            "VarianceScaling",
            "Constant",
        ):
            _init_from_config(weight, initializer, fan_in, fan_out)
        elif name == "glorot_uniform":
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            weight.uniform_(-limit, limit)
        elif name in ("glorot_normal", "he_normal"):  # Keras: truncated at 2 stddev
            scale, mode = (1.0, "fan_avg") if name == "glorot_normal" else (2.0, "fan_in")
            config = {"scale": scale, "mode": mode, "distribution": "truncated_normal"}
            _init_from_config(
                weight, {"class_name": "VarianceScaling", "config": config}, fan_in, fan_out
            )
        elif name == "he_uniform":
            limit = math.sqrt(6.0 / fan_in)
            weight.uniform_(-limit, limit)
        elif name == "zeros":
            weight.zero_()
        elif name == "ones":
            weight.fill_(1.0)
        else:
            raise NotImplementedError(
                f"initializer={initializer!r}. Supported: 'glorot_uniform', 'glorot_normal', "
                "'he_normal', 'he_uniform', 'zeros', 'ones'."
            )


class Dense(Layer):
    """Fully connected layer; kernel is ``(in, units)`` in Keras's weights."""

    def __init__(
        self,
        units: int,
        activation: Any = None,
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        bias_regularizer: Any = None,
        activity_regularizer: Any = None,
        kernel_constraint: Any = None,
        bias_constraint: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(units, int) or units <= 0:
            raise ValueError(
                f"Received an invalid value for `units`, expected a positive integer. "
                f"Received: units={units!r}"
            )
        for arg, value in (
            ("activity_regularizer", activity_regularizer),
            ("kernel_constraint", kernel_constraint),
            ("bias_constraint", bias_constraint),
        ):
            if value is not None:
                raise NotImplementedError(f"Dense({arg}=...)")
        self.units = units
        self.activation = activation
        self._act = activations.get(activation)
        self.use_bias = use_bias
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.linear: nn.Linear | None = None

    def build(self, input_shape: Shape) -> None:
        if len(input_shape) < 2 or input_shape[-1] is None:
            raise ValueError(
                f"Dense '{self.name}' needs a known last dimension. Received: "
                f"input_shape={input_shape}"
            )
        fan_in = int(input_shape[-1])
        self.linear = nn.Linear(fan_in, self.units, bias=self.use_bias)
        _init_weight(self.linear.weight, self.kernel_initializer, fan_in, self.units)
        if self.use_bias:
            _init_weight(self.linear.bias, self.bias_initializer, fan_in, self.units)

    def _check_input_shape(self, input_shape: Shape) -> None:
        if _is_list(input_shape) or input_shape[-1] != self.linear.in_features:
            raise ValueError(
                f"Input of layer '{self.name}' is incompatible with the layer: expected "
                f"axis -1 of input shape to have value {self.linear.in_features}, but "
                f"received input with shape {input_shape}"
            )

    @classmethod
    def from_torch(cls, linear: nn.Linear, *, name: str, activation: Any = None) -> Dense:
        layer = cls(
            linear.out_features, activation=activation, name=name, use_bias=linear.bias is not None
        )
        layer.linear = linear
        layer.built = True
        layer._build_shape = (None, linear.in_features)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            return self._act(self.linear(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        return self._act(self.linear(x))

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return (*input_shape[:-1], self.units)

    def _own_variables(self) -> list[Variable]:
        if self.linear is None:
            return []
        out = [
            Variable(
                self,
                "kernel",
                self.linear,
                "weight",
                trainable=True,
                to_keras=lambda t: t.t(),
                from_keras=lambda t: t.t(),
            )
        ]
        if self.linear.bias is not None:
            out.append(Variable(self, "bias", self.linear, "bias", trainable=True))
        return out

    def regularization_losses(self) -> list[torch.Tensor]:
        out = []
        if self.kernel_regularizer is not None and self.trainable:
            out.append(self.kernel_regularizer(self.linear.weight))
        if self.bias_regularizer is not None and self.trainable and self.use_bias:
            out.append(self.bias_regularizer(self.linear.bias))
        return out

    def get_config(self) -> dict[str, Any]:
        activation = activations.serialize(self.activation)
        return {**super().get_config(), "units": self.units, "activation": activation}


class Dropout(Layer):
    def __init__(
        self, rate: float, noise_shape: Any = None, seed: int | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        if not 0 <= rate <= 1:
            raise ValueError(
                f"Invalid value received for argument `rate`. Expected a float value between "
                f"0 and 1. Received: rate={rate}"
            )
        if noise_shape is not None and not (
            isinstance(noise_shape, (list, tuple))
            and all(d is None or (isinstance(d, int) and d > 0) for d in noise_shape)
        ):
            raise ValueError(
                f"Dropout(noise_shape=...): a list or tuple of positive ints or None, one per "
                f"input axis (channels-last); received {noise_shape!r}"
            )
        self.rate = float(rate)
        self.noise_shape = None if noise_shape is None else tuple(noise_shape)
        self.dropout = nn.Dropout(self.rate)
        self.seed, self._rng = seed, SeedGenerator(seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        if self.seed is None and self.noise_shape is None:
            return self.dropout(x)
        if self.rate == 1.0:
            return torch.zeros_like(x)
        # Keras's seeded torch dropout: a Bernoulli keep mask from the layer's generator,
        # of noise_shape (Keras's channels-last axes, None: the input's) broadcast over x
        keep = 1.0 - self.rate
        shape = tuple(x.shape) if x.ndim != 4 else (x.shape[0], *x.shape[2:], x.shape[1])
        if self.noise_shape is not None:
            if len(self.noise_shape) != x.ndim:
                raise ValueError(
                    f"Dropout(noise_shape={self.noise_shape}) on an input of shape {shape}"
                )
            shape = tuple(
                s if d is None else d for d, s in zip(self.noise_shape, shape, strict=True)
            )
        if self.seed is None:
            mask = torch.rand(shape, device=x.device) < keep
        else:
            mask = self._rng.rand(*shape, device=x.device) < keep
        if x.ndim == 4:
            mask = mask.permute(0, 3, 1, 2)
        return torch.where(mask, x / keep, torch.zeros_like(x))

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "rate": self.rate,
            "seed": self.seed,
            "noise_shape": self.noise_shape,
        }


class Activation(Layer):
    def __init__(self, activation: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.activation = activation
        self._act = activations.get(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._act(x)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "activation": activations.serialize(self.activation)}


class Flatten(Layer):
    """Flattens in Keras's (channels-last) order, so Dense weights match Keras's."""

    def __init__(self, data_format: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        _check_data_format(data_format, "Flatten")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            x = x.permute(0, 2, 3, 1)
        return x.flatten(1)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        dims = input_shape[1:]
        return (input_shape[0], None if None in dims else int(math.prod(dims)))


class BatchNormalization(Layer):
    """Batch normalization; ``trainable=False`` means inference mode (moving statistics,
    never updated), as in Keras. Keras's ``momentum`` m is torch's ``1 - m``.

    In training the moving variance is updated with the *biased* batch variance, as Keras
    does (torch's own update uses the unbiased one, which would drift from Keras's
    statistics and so from its inference outputs)."""

    def __init__(
        self,
        axis: int = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        beta_initializer: Any = "zeros",
        gamma_initializer: Any = "ones",
        moving_mean_initializer: Any = "zeros",
        moving_variance_initializer: Any = "ones",
        synchronized: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # center/scale=False (Keras's InceptionV3): beta 0 / gamma 1 as fixed buffers
        self.center, self.scale = bool(center), bool(scale)
        defaults = ("zeros", "ones", "zeros", "ones")
        given = (
            beta_initializer,
            gamma_initializer,
            moving_mean_initializer,
            moving_variance_initializer,
        )
        if given != defaults:
            raise NotImplementedError("BatchNormalization with non-default initializers")
        self.axis = axis
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        if synchronized:
            raise NotImplementedError(
                "BatchNormalization(synchronized=True): Keras's torch backend has no "
                "synchronized batch statistics either."
            )
        self.synchronized = synchronized
        self.bn: nn.modules.batchnorm._BatchNorm | None = None

    def build(self, input_shape: Shape) -> None:
        rank = len(input_shape)
        if self.axis % rank != rank - 1:
            raise NotImplementedError(
                f"BatchNormalization(axis={self.axis}) on inputs of shape {input_shape}: only "
                "the channels (last) axis is supported."
            )
        channels = int(input_shape[-1])
        cls = nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d
        if rank == 3:
            raise NotImplementedError("BatchNormalization on rank-3 inputs")
        self.bn = cls(channels, eps=self.epsilon, momentum=1.0 - self.momentum)
        for fixed, attr in ((not self.scale, "weight"), (not self.center, "bias")):
            if fixed:  # a buffer: never trained, not one of Keras's variables
                value = getattr(self.bn, attr).detach()
                delattr(self.bn, attr)
                self.bn.register_buffer(attr, value)

    @classmethod
    def from_torch(cls, bn: nn.modules.batchnorm._BatchNorm, *, name: str) -> BatchNormalization:
        layer = cls(name=name, epsilon=bn.eps, momentum=1.0 - (bn.momentum or 0.0))
        layer.bn = bn
        layer.built = True
        return layer

    def _check_input_shape(self, input_shape: Shape) -> None:
        if _is_list(input_shape) or input_shape[-1] != self.bn.num_features:
            raise ValueError(
                f"Input of layer '{self.name}' is incompatible: expected axis -1 of size "
                f"{self.bn.num_features}, received input with shape {input_shape}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        if not (bn.training and bn.running_mean is not None and bn.momentum is not None):
            return bn(x)
        # batch statistics without torch's (unbiased) running update; then Keras's update
        out, mean, invstd = torch.native_batch_norm(
            x, bn.weight, bn.bias, None, None, True, 0.0, bn.eps
        )
        with torch.no_grad():
            keep = self.momentum
            var = invstd.float().pow(-2).sub_(bn.eps)
            bn.running_mean.mul_(keep).add_(mean.float(), alpha=1.0 - keep)
            bn.running_var.mul_(keep).add_(var, alpha=1.0 - keep)
        return out

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return input_shape

    def _frozen_bn_modules(self) -> list[nn.Module]:
        return [self.bn] if self.bn is not None and not self.trainable else []

    def _own_variables(self) -> list[Variable]:
        if self.bn is None:
            return []
        out = []
        if self.bn.weight is not None and self.scale:
            out.append(Variable(self, "gamma", self.bn, "weight", trainable=True))
        if self.bn.bias is not None and self.center:
            out.append(Variable(self, "beta", self.bn, "bias", trainable=True))
        out.append(Variable(self, "moving_mean", self.bn, "running_mean", trainable=False))
        out.append(Variable(self, "moving_variance", self.bn, "running_var", trainable=False))
        return out


# ----- pooling / reshaping -------------------------------------------------------------


class GlobalAveragePooling2D(Layer):
    def __init__(
        self, data_format: str | None = None, keepdims: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        _check_data_format(data_format, type(self).__name__)
        self.keepdims = keepdims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=self.keepdims)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        _expect_rank(self, input_shape, 4)
        if self.keepdims:
            return (input_shape[0], 1, 1, input_shape[-1])
        return (input_shape[0], input_shape[-1])


class GlobalMaxPooling2D(GlobalAveragePooling2D):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.amax(dim=(2, 3), keepdim=self.keepdims)


def _check_data_format(data_format: str | None, what: str) -> None:
    if data_format not in (None, "channels_last"):
        raise NotImplementedError(
            f"{what}(data_format={data_format!r}): compat is channels_last at its boundary."
        )


def _expect_rank(layer: Layer, input_shape: Any, rank: int) -> None:
    if _is_list(input_shape) or len(input_shape) != rank:
        raise ValueError(
            f"Input 0 of layer '{layer.name}' is incompatible with the layer: expected "
            f"ndim={rank}, found ndim={len(input_shape)}. Full shape received: {input_shape}"
        )


def _is_list(shape: Any) -> bool:
    return isinstance(shape, list) and bool(shape) and isinstance(shape[0], (tuple, list))
