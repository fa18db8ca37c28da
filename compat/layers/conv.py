"""Convolution, spatial pooling and padding layers (channels-last at the boundary)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compat import activations
from compat.layers.base import Layer, Shape, Variable, conv_kernel_from_keras, conv_kernel_to_keras
from compat.layers.core import _check_data_format, _expect_rank, _init_weight, _is_list


def _pair(value: Any, what: str) -> tuple[int, int]:
    """Keras's ``standardize_tuple``: an int or 2 ints, each > 0."""
    if isinstance(value, int):
        pair = (value, value)
    elif (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, int) for v in value)
    ):
        pair = (int(value[0]), int(value[1]))
    else:
        raise ValueError(
            f"The `{what}` argument must be an int or a tuple of 2 ints. Received: {what}={value!r}"
        )
    bad = {v for v in pair if v <= 0}
    if bad:
        raise ValueError(
            f"The `{what}` argument must be a tuple of 2 integers. Received {what}={value!r}, "
            f"including values {bad} that do not satisfy `value > 0`"
        )
    return pair


def _check_padding(padding: str) -> str:
    padding = str(padding).lower()
    if padding not in ("valid", "same"):
        raise ValueError(f"padding must be 'valid' or 'same'. Received: padding={padding!r}")
    return padding


def _same_pads(size: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
    return total // 2, total - total // 2


def _out_len(size: int | None, k: int, s: int, padding: str, d: int = 1, pad: int = 0):
    if size is None:
        return None
    if padding == "same":
        return math.ceil(size / s)
    return (size + pad - d * (k - 1) - 1) // s + 1


def set_conv_arguments(
    layer: Layer,
    filters: int | None,
    kernel_size: Any,
    strides: Any,
    padding: str,
    data_format: str | None,
    dilation_rate: Any,
) -> None:
    """Keras's checks of a 2-D convolution's arguments; sets them on ``layer``
    (``filters=None``: a depthwise convolution, whose filters follow its input)."""
    _check_data_format(data_format, type(layer).__name__)
    if filters is not None:
        if not isinstance(filters, int) or filters <= 0:
            raise ValueError(
                "Invalid value for argument `filters`. Expected a strictly positive value. "
                f"Received filters={filters!r}."
            )
        layer.filters = filters
    layer.kernel_size = _pair(kernel_size, "kernel_size")
    layer.strides = _pair(strides, "strides")
    layer.dilation_rate = _pair(dilation_rate, "dilation_rate")
    layer.padding = _check_padding(padding)


def check_in_channels(layer: Layer, input_shape: Shape, in_channels: int) -> None:
    """Keras's error for an input whose channels are not those the layer was built for."""
    _expect_rank(layer, input_shape, 4)
    if input_shape[-1] != in_channels:
        raise ValueError(
            f"Input of layer '{layer.name}' is incompatible with the layer: expected axis "
            f"-1 of input shape to have value {in_channels}, but received input "
            f"with shape {input_shape}"
        )


def keras_same_pad(layer: Any, x: torch.Tensor, torch_pad: tuple[int, ...]) -> torch.Tensor:
    """Keras's ``'same'`` padding (more at the bottom/right when the total is odd), unless the
    wrapped torch convolution pads by itself (``torch_pad``)."""
    if layer.padding != "same" or tuple(torch_pad) != (0, 0):
        return x
    kh, kw = layer.kernel_size
    t, b = _same_pads(x.shape[2], kh, layer.strides[0], layer.dilation_rate[0])
    left, r = _same_pads(x.shape[3], kw, layer.strides[1], layer.dilation_rate[1])
    if t or b or left or r:
        x = F.pad(x, (left, r, t, b))
    return x


def conv_output_shape(layer: Any, input_shape: Shape, torch_pad: tuple[int, ...]) -> Shape:
    """A convolution's output shape (channels: ``layer.filters``)."""
    _expect_rank(layer, input_shape, 4)
    dims = []
    for i in range(2):
        k, s, d = layer.kernel_size[i], layer.strides[i], layer.dilation_rate[i]
        if tuple(torch_pad) != (0, 0):
            dims.append(_out_len(input_shape[1 + i], k, s, "valid", d, 2 * torch_pad[i]))
        else:
            dims.append(_out_len(input_shape[1 + i], k, s, layer.padding, d))
    return (input_shape[0], dims[0], dims[1], layer.filters)


def depthwise_kernel(layer: Layer, name: str, conv: nn.Conv2d, multiplier: int) -> Variable:
    """Keras's ``(kh, kw, in, multiplier)`` view of a grouped conv's ``(in * mult, 1, kh, kw)``."""
    cin = conv.in_channels

    def to_keras(w: torch.Tensor) -> torch.Tensor:
        return w.reshape(cin, multiplier, *w.shape[2:]).permute(2, 3, 0, 1)

    def from_keras(w: torch.Tensor) -> torch.Tensor:
        return w.permute(2, 3, 0, 1).reshape(cin * multiplier, 1, *w.shape[:2])

    return Variable(
        layer, name, conv, "weight", trainable=True, to_keras=to_keras, from_keras=from_keras
    )


def conv_kernel(layer: Layer, name: str, conv: nn.Conv2d) -> Variable:
    """Keras's ``(kh, kw, in, out)`` view of a convolution's ``(out, in, kh, kw)`` weight."""
    return Variable(
        layer,
        name,
        conv,
        "weight",
        trainable=True,
        to_keras=conv_kernel_to_keras,
        from_keras=conv_kernel_from_keras,
    )


def with_bias(layer: Layer, kernels: list[Variable], conv: nn.Conv2d) -> list[Variable]:
    """``kernels``, then Keras's ``bias`` (``conv``'s) when the convolution has one."""
    if conv.bias is None:
        return kernels
    return [*kernels, Variable(layer, "bias", conv, "bias", trainable=True)]


class Conv2D(Layer):
    """2-D convolution; kernel is ``(kh, kw, in, out)`` in Keras's weights.

    Keras's ``'same'`` padding pads more at the bottom/right when the total is odd (strided
    convolutions); this is reproduced with an explicit pad.
    """

    def __init__(
        self,
        filters: int,
        kernel_size: Any,
        strides: Any = (1, 1),
        padding: str = "valid",
        data_format: str | None = None,
        dilation_rate: Any = (1, 1),
        groups: int = 1,
        activation: Any = None,
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if kernel_regularizer is not None:
            raise NotImplementedError("Conv2D(kernel_regularizer=...)")
        set_conv_arguments(self, filters, kernel_size, strides, padding, data_format, dilation_rate)
        self.groups = groups
        self.activation = activation
        self._act = activations.get(activation)
        self.use_bias = use_bias
        self.kernel_initializer = kernel_initializer
        self.bias_initializer = bias_initializer
        self.conv: nn.Conv2d | None = None
        self._torch_pad = (0, 0)

    def build(self, input_shape: Shape) -> None:
        _expect_rank(self, input_shape, 4)
        cin = int(input_shape[-1])
        self.conv = nn.Conv2d(
            cin,
            self.filters,
            self.kernel_size,
            self.strides,
            padding=0,
            dilation=self.dilation_rate,
            groups=self.groups,
            bias=self.use_bias,
        )
        fan_in = cin // self.groups * self.kernel_size[0] * self.kernel_size[1]
        fan_out = self.filters * self.kernel_size[0] * self.kernel_size[1]
        _init_weight(self.conv.weight, self.kernel_initializer, fan_in, fan_out)
        if self.use_bias:
            _init_weight(self.conv.bias, self.bias_initializer, fan_in, fan_out)

    @classmethod
    def from_torch(
        cls, conv: nn.Conv2d, *, name: str, padding: str, activation: Any = None
    ) -> Conv2D:
        """Wrap an existing torch convolution (its own ``padding`` is kept as is)."""
        layer = cls(
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            padding=padding,
            dilation_rate=conv.dilation,
            groups=conv.groups,
            activation=activation,
            use_bias=conv.bias is not None,
            name=name,
        )
        layer.conv = conv
        layer._torch_pad = tuple(conv.padding)
        layer.built = True
        return layer

    def _check_input_shape(self, input_shape: Shape) -> None:
        check_in_channels(self, input_shape, self.conv.in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._act(self.conv(keras_same_pad(self, x, self._torch_pad)))

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return conv_output_shape(self, input_shape, self._torch_pad)

    def _own_variables(self) -> list[Variable]:
        if self.conv is None:
            return []
        return with_bias(self, [conv_kernel(self, "kernel", self.conv)], self.conv)


class MaxPooling2D(Layer):
    def __init__(
        self,
        pool_size: Any = (2, 2),
        strides: Any = None,
        padding: str = "valid",
        data_format: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _check_data_format(data_format, type(self).__name__)
        self.pool_size = _pair(pool_size, "pool_size")
        self.strides = _pair(strides, "strides") if strides is not None else self.pool_size
        self.padding = _check_padding(padding)
        self.count_include_pad = False

    def _pads(self, x: torch.Tensor) -> tuple[int, int, int, int]:
        t, b = _same_pads(x.shape[2], self.pool_size[0], self.strides[0])
        left, r = _same_pads(x.shape[3], self.pool_size[1], self.strides[1])
        return (left, r, t, b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == "same":
            x = F.pad(x, self._pads(x), value=float("-inf"))
        return F.max_pool2d(x, self.pool_size, self.strides)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        _expect_rank(self, input_shape, 4)
        h = _out_len(input_shape[1], self.pool_size[0], self.strides[0], self.padding)
        w = _out_len(input_shape[2], self.pool_size[1], self.strides[1], self.padding)
        return (input_shape[0], h, w, input_shape[3])


class AveragePooling2D(MaxPooling2D):
    """Average pooling; with ``'same'`` padding the padded zeros are not counted (Keras)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == "valid":
            return F.avg_pool2d(x, self.pool_size, self.strides)
        pads = self._pads(x)
        symmetric = pads[0] == pads[1] and pads[2] == pads[3]
        if symmetric and pads[0] * 2 <= self.pool_size[1] and pads[2] * 2 <= self.pool_size[0]:
            return F.avg_pool2d(
                x,
                self.pool_size,
                self.strides,
                padding=(pads[2], pads[0]),
                count_include_pad=self.count_include_pad,
            )
        summed = F.avg_pool2d(F.pad(x, pads), self.pool_size, self.strides, divisor_override=1)
        if self.count_include_pad:
            return summed / (self.pool_size[0] * self.pool_size[1])
        ones = F.pad(torch.ones_like(x[:1, :1]), pads)
        count = F.avg_pool2d(ones, self.pool_size, self.strides, divisor_override=1)
        return summed / count


class ZeroPadding2D(Layer):
    def __init__(
        self, padding: Any = (1, 1), data_format: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        _check_data_format(data_format, "ZeroPadding2D")
        if isinstance(padding, int):
            padding = ((padding, padding), (padding, padding))
        elif isinstance(padding[0], int):
            padding = ((padding[0], padding[0]), (padding[1], padding[1]))
        self.padding = (tuple(padding[0]), tuple(padding[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (t, b), (left, r) = self.padding
        return F.pad(x, (left, r, t, b))

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        _expect_rank(self, input_shape, 4)
        (t, b), (left, r) = self.padding
        h = None if input_shape[1] is None else input_shape[1] + t + b
        w = None if input_shape[2] is None else input_shape[2] + left + r
        return (input_shape[0], h, w, input_shape[3])


__all__ = ["AveragePooling2D", "Conv2D", "MaxPooling2D", "ZeroPadding2D", "_is_list"]
