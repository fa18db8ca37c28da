"""``keras.layers.DepthwiseConv2D``: kernel ``(kh, kw, in, depth_multiplier)`` in Keras's
weights, a grouped ``nn.Conv2d`` (weight ``(in * multiplier, 1, kh, kw)``) inside."""

from __future__ import annotations

from typing import Any

from torch import nn

from compat.layers.base import Shape, Variable
from compat.layers.conv import Conv2D, depthwise_kernel, with_bias
from compat.layers.core import _init_weight


class DepthwiseConv2D(Conv2D):
    def __init__(
        self,
        kernel_size: Any,
        strides: Any = (1, 1),
        padding: str = "valid",
        depth_multiplier: int = 1,
        data_format: str | None = None,
        dilation_rate: Any = (1, 1),
        activation: Any = None,
        use_bias: bool = True,
        depthwise_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            1,  # replaced by in_channels * depth_multiplier when built
            kernel_size,
            strides,
            padding=padding,
            data_format=data_format,
            dilation_rate=dilation_rate,
            activation=activation,
            use_bias=use_bias,
            kernel_initializer=depthwise_initializer,
            bias_initializer=bias_initializer,
            **kwargs,
        )
        self.depth_multiplier = int(depth_multiplier)
        self.depthwise_initializer = depthwise_initializer

    def build(self, input_shape: Shape) -> None:
        self.groups = int(input_shape[-1])
        self.filters = self.groups * self.depth_multiplier
        Conv2D.build(self, input_shape)
        # Keras's fans for a (kh, kw, in, multiplier) kernel
        receptive = self.kernel_size[0] * self.kernel_size[1]
        _init_weight(
            self.conv.weight,
            self.kernel_initializer,
            self.groups * receptive,
            self.depth_multiplier * receptive,
        )

    @classmethod
    def from_torch(
        cls, conv: nn.Conv2d, *, name: str, padding: str, activation: Any = None
    ) -> DepthwiseConv2D:
        """Wrap a torch depthwise convolution (``groups == in_channels``)."""
        if conv.groups != conv.in_channels or conv.weight.shape[1] != 1:
            raise ValueError(f"{conv} is not a depthwise convolution (groups == in_channels).")
        layer = cls(
            conv.kernel_size,
            conv.stride,
            padding=padding,
            depth_multiplier=conv.out_channels // conv.in_channels,
            dilation_rate=conv.dilation,
            activation=activation,
            use_bias=conv.bias is not None,
            name=name,
        )
        layer.groups, layer.filters = conv.in_channels, conv.out_channels
        layer.conv = conv
        layer._torch_pad = tuple(conv.padding)
        layer.built = True
        return layer

    def _own_variables(self) -> list[Variable]:
        if self.conv is None:
            return []
        kernel = depthwise_kernel(self, "kernel", self.conv, self.depth_multiplier)
        return with_bias(self, [kernel], self.conv)


__all__ = ["DepthwiseConv2D"]
