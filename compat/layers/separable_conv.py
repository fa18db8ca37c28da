"""``keras.layers.SeparableConv2D``: a depthwise convolution then a 1x1 pointwise one;
Keras's weights ``depthwise_kernel`` ``(kh, kw, in, multiplier)``, ``pointwise_kernel``
``(1, 1, in * multiplier, filters)`` and ``bias``."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compat import activations
from compat.layers.base import Layer, Shape, Variable, conv_kernel_from_keras, conv_kernel_to_keras
from compat.layers.conv import _check_padding, _out_len, _pair, _same_pads
from compat.layers.core import _check_data_format, _expect_rank, _init_weight


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
        _check_data_format(data_format, "SeparableConv2D")
        if not isinstance(filters, int) or filters <= 0:
            raise ValueError(
                "Invalid value for argument `filters`. Expected a strictly positive value. "
                f"Received filters={filters!r}."
            )
        self.filters = filters
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.strides = _pair(strides, "strides")
        self.dilation_rate = _pair(dilation_rate, "dilation_rate")
        self.padding = _check_padding(padding)
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
        _expect_rank(self, input_shape, 4)
        if input_shape[-1] != self.depthwise.in_channels:
            raise ValueError(
                f"Input of layer '{self.name}' is incompatible with the layer: expected axis "
                f"-1 of input shape to have value {self.depthwise.in_channels}, but received "
                f"input with shape {input_shape}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == "same" and tuple(self.depthwise.padding) == (0, 0):
            kh, kw = self.kernel_size
            t, b = _same_pads(x.shape[2], kh, self.strides[0], self.dilation_rate[0])
            left, r = _same_pads(x.shape[3], kw, self.strides[1], self.dilation_rate[1])
            if t or b or left or r:
                x = F.pad(x, (left, r, t, b))
        return self._act(self.pointwise(self.depthwise(x)))

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        _expect_rank(self, input_shape, 4)
        torch_pad = tuple(self.depthwise.padding) if self.depthwise is not None else (0, 0)
        dims = []
        for i in range(2):
            k, s, d = self.kernel_size[i], self.strides[i], self.dilation_rate[i]
            if torch_pad != (0, 0):
                dims.append(_out_len(input_shape[1 + i], k, s, "valid", d, 2 * torch_pad[i]))
            else:
                dims.append(_out_len(input_shape[1 + i], k, s, self.padding, d))
        return (None, dims[0], dims[1], self.filters)

    def _own_variables(self) -> list[Variable]:
        if self.depthwise is None:
            return []
        cin, mult = self.depthwise.in_channels, self.depth_multiplier

        def dw_to_keras(w: torch.Tensor) -> torch.Tensor:
            return w.reshape(cin, mult, *w.shape[2:]).permute(2, 3, 0, 1)

        def dw_from_keras(w: torch.Tensor) -> torch.Tensor:
            return w.permute(2, 3, 0, 1).reshape(cin * mult, 1, *w.shape[:2])

        out = [
            Variable(
                self,
                "depthwise_kernel",
                self.depthwise,
                "weight",
                trainable=True,
                to_keras=dw_to_keras,
                from_keras=dw_from_keras,
            ),
            Variable(
                self,
                "pointwise_kernel",
                self.pointwise,
                "weight",
                trainable=True,
                to_keras=conv_kernel_to_keras,
                from_keras=conv_kernel_from_keras,
            ),
        ]
        if self.pointwise.bias is not None:
            out.append(Variable(self, "bias", self.pointwise, "bias", trainable=True))
        return out

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
