"""``keras.layers.SeparableConv2D``: a depthwise convolution then a 1x1 pointwise one;
Keras's weights ``depthwise_kernel`` ``(kh, kw, in, multiplier)``, ``pointwise_kernel``
``(1, 1, in * multiplier, filters)`` and ``bias``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compat import activations
from compat.layers.base import Layer, Shape, Variable
from compat.layers.conv import (
    check_in_channels,
    conv_kernel,
    conv_output_shape,
    depthwise_kernel,
    keras_same_pad,
    set_conv_arguments,
    with_bias,
)
from compat.layers.core import _expect_rank, _init_weight


class SeparableConv2D(Layer):
    def __init__(
        self,
        filters: int,
        kernel_size: Any,
        strides: Any = (1, 1),
        padding: str = "valid",
        data_format: str | None = None,
        dilation_rate: Any = (1, 1),
        depth_multiplier: int = 1,
        activation: Any = None,
        use_bias: bool = True,
        depthwise_initializer: Any = "glorot_uniform",
        pointwise_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        set_conv_arguments(self, filters, kernel_size, strides, padding, data_format, dilation_rate)
        self.depth_multiplier = int(depth_multiplier)
        self.activation = activation
        self._act = activations.get(activation)
        self.use_bias = use_bias
        self.depthwise_initializer = depthwise_initializer
        self.pointwise_initializer = pointwise_initializer
        self.bias_initializer = bias_initializer
        self.depthwise: nn.Conv2d | None = None
        self.pointwise: nn.Conv2d | None = None

    def build(self, input_shape: Shape) -> None:
        _expect_rank(self, input_shape, 4)
        cin, mult = int(input_shape[-1]), self.depth_multiplier
        self.depthwise = nn.Conv2d(
            cin,
            cin * mult,
            self.kernel_size,
            self.strides,
            dilation=self.dilation_rate,
            groups=cin,
            bias=False,
        )
        self.pointwise = nn.Conv2d(cin * mult, self.filters, 1, bias=self.use_bias)
        receptive = self.kernel_size[0] * self.kernel_size[1]
        _init_weight(
            self.depthwise.weight, self.depthwise_initializer, cin * receptive, mult * receptive
        )
        _init_weight(self.pointwise.weight, self.pointwise_initializer, cin * mult, self.filters)
        if self.use_bias:
            _init_weight(self.pointwise.bias, self.bias_initializer, cin * mult, self.filters)

    @classmethod
    def from_torch(
        cls,
        depthwise: nn.Conv2d,
        pointwise: nn.Conv2d,
        *,
        name: str,
        padding: str,
        activation: Any = None,
    ) -> SeparableConv2D:
        """Wrap a torch depthwise convolution (its own ``padding`` kept) and a 1x1 one."""
        if depthwise.groups != depthwise.in_channels or pointwise.kernel_size != (1, 1):
            raise ValueError(f"{depthwise}, {pointwise} are not a separable convolution.")
        if depthwise.bias is not None:
            raise ValueError(f"{name}: Keras's depthwise part has no bias")
        layer = cls(
            pointwise.out_channels,
            depthwise.kernel_size,
            depthwise.stride,
            padding=padding,
            dilation_rate=depthwise.dilation,
            depth_multiplier=depthwise.out_channels // depthwise.in_channels,
            activation=activation,
            use_bias=pointwise.bias is not None,
            name=name,
        )
        layer.depthwise, layer.pointwise = depthwise, pointwise
        layer.built = True
        return layer

    def _check_input_shape(self, input_shape: Shape) -> None:
        check_in_channels(self, input_shape, self.depthwise.in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = keras_same_pad(self, x, self.depthwise.padding)
        return self._act(self.pointwise(self.depthwise(x)))

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        torch_pad = self.depthwise.padding if self.depthwise is not None else (0, 0)
        return conv_output_shape(self, input_shape, torch_pad)

    def _own_variables(self) -> list[Variable]:
        if self.depthwise is None:
            return []
        kernels = [
            depthwise_kernel(self, "depthwise_kernel", self.depthwise, self.depth_multiplier),
            conv_kernel(self, "pointwise_kernel", self.pointwise),
        ]
        return with_bias(self, kernels, self.pointwise)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "dilation_rate": self.dilation_rate,
            "depth_multiplier": self.depth_multiplier,
            "activation": self.activation,
            "use_bias": self.use_bias,
        }


__all__ = ["SeparableConv2D"]
