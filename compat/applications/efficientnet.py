"""EfficientNetB0-B7 (``keras.applications.efficientnet``) on timm's ``tf_efficientnet_b0..b7``
modules (the ports of the TensorFlow checkpoints Keras's weights come from).

Same layers (EfficientNetB0: 240 with the top, 237 without), names, order, output shapes,
parameter counts and initialisation as Keras. As in Keras, preprocessing is part of the
model: ``preprocess_input`` is a pass-through, inputs are RGB pixels in [0, 255], and the
``rescaling`` (1/255) and ``normalization`` layers hold the weights' normalisation (timm's
ImageNet mean/std; with ``weights="imagenet"`` Keras's extra ``rescaling_1`` layer is built
too, Keras's fix for its stored variance). With ``weights=None`` the normalization is the
identity, as Keras's un-adapted one. The stride-2 layers pad as TensorFlow's ``'same'``
(``*_pad`` layers, computed from the actual size, as timm's ``Conv2dSame``): built without
an input size, Keras pads as for even sizes, so on odd sizes its feature maps are one smaller
than those of the same Keras model built for that size; compat's always match the latter.
The drop-connect ``*_drop`` layers are Keras's ``Dropout(noise_shape=(None, 1, 1, 1))``.
No difference is forced by the torch weights.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compat import layers
from compat.applications import _common
from compat.applications.imagenet_utils import convention
from compat.applications.imagenet_utils import decode_predictions as decode_predictions
from compat.layers.base import Shape
from compat.models import Model

CONV_KERNEL_INITIALIZER = _common.variance_scaling(2.0, "fan_out", "truncated_normal")
DENSE_KERNEL_INITIALIZER = _common.variance_scaling(1.0 / 3.0, "fan_out", "uniform")
_DROP_CONNECT_RATE = 0.2

# Keras's (width, depth, default size, dropout) per model.
_PARAMS = {
    0: (1.0, 1.0, 224, 0.2),
    1: (1.0, 1.1, 240, 0.2),
    2: (1.1, 1.2, 260, 0.3),
    3: (1.2, 1.4, 300, 0.3),
    4: (1.4, 1.8, 380, 0.4),
    5: (1.6, 2.2, 456, 0.4),
    6: (1.8, 2.6, 528, 0.5),
    7: (2.0, 3.1, 600, 0.5),
}


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class ZeroPadding2D(layers.ZeroPadding2D):
    """TensorFlow ``'same'`` padding of a strided convolution, from the actual input size
    (``padding`` reports Keras's value; for an unknown size, Keras's even-size value)."""

    def __init__(self, kernel_size: int, strides: int, input_shape: Shape, **kwargs: Any) -> None:
        pads = [
            _same_pads(2 * kernel_size if s is None else int(s), kernel_size, strides)
            for s in input_shape[1:3]
        ]
        super().__init__(padding=tuple(pads), **kwargs)
        self.kernel_size, self.strides = kernel_size, strides
        self._fixed = all(s is not None for s in input_shape[1:3])

    def keras_written_as(self) -> str:
        """A Keras file's ``ZeroPadding2D`` pads as this layer only at a fixed input size."""
        if not getattr(self, "_fixed", False):
            from compat.keras_format import NotWritableError

            raise NotWritableError(
                f"Layer '{self.name}' pads for each input size as TensorFlow's 'same' does; "
                "Keras's ZeroPadding2D has one padding. Build the model with a fixed "
                "input_shape to write a Keras file."
            )
        return "ZeroPadding2D"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, b = _same_pads(x.shape[2], self.kernel_size, self.strides)
        left, r = _same_pads(x.shape[3], self.kernel_size, self.strides)
        return F.pad(x, (left, r, t, b))


class Dropout(layers.Dropout):
    """Keras's ``Dropout(rate, noise_shape=(None, 1, 1, 1))``: drops whole samples of a
    residual branch (drop-connect), scaling kept ones by ``1 / (1 - rate)``."""

    keras_written_as = "Dropout"  # with its noise_shape, as Keras's

    def __init__(self, rate: float, **kwargs: Any) -> None:
        super().__init__(rate, **kwargs)
        self.noise_shape = (None, 1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0:
            return x
        keep = 1.0 - self.rate
        mask = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device).bernoulli_(keep)
        return x * mask.to(x.dtype) / keep

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "noise_shape": self.noise_shape}


class Rescaling(layers.Rescaling):
    """Keras's ``Rescaling`` with a per-channel ``scale``."""

    keras_written_as = "Rescaling"

    def __init__(self, scale: Any, **kwargs: Any) -> None:
        super().__init__(1.0, **kwargs)
        self.scale = tuple(float(s) for s in scale)  # type: ignore[assignment]
        self.register_buffer("_scale", torch.tensor(self.scale).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._scale.to(x.dtype)


def _conv(
    conv: nn.Conv2d, name: str, padding: str, activation: Any = None, strided_same: bool = False
) -> Any:
    """Keras's convolution on ``conv``; ``strided_same``: Keras's own ``'same'`` padding of a
    strided convolution (EfficientNetV2; EfficientNet pads in ``*_pad`` layers first)."""
    if type(conv) is not nn.Conv2d:  # timm's Conv2dSame: Keras pads (a layer, or 'same')
        conv.__class__ = nn.Conv2d
    if padding == "same" and conv.stride != (1, 1) and not strided_same:
        raise RuntimeError(f"{name}: a strided convolution must follow a padding layer")
    cls = layers.DepthwiseConv2D if conv.groups > 1 else layers.Conv2D
    layer = cls.from_torch(conv, name=name, padding=padding, activation=activation)
    layer.kernel_initializer = CONV_KERNEL_INITIALIZER
    if cls is layers.DepthwiseConv2D:
        layer.depthwise_initializer = CONV_KERNEL_INITIALIZER
    return layer


def _bn_act(x: Any, bn: Any, name: str, act_name: str | None) -> Any:
    x = layers.BatchNormalization.from_torch(_common.no_act_bn(bn), name=name)(x)
    return x if act_name is None else layers.Activation("swish", name=act_name)(x)


def _strided(x: Any, conv: nn.Conv2d, name: str) -> Any:
    """``conv`` (Keras ``valid`` after a ``*_pad`` layer when strided, else ``same``)."""
    if conv.stride == (1, 1):
        return _conv(conv, name, "same")(x)
    k, s = conv.kernel_size[0], conv.stride[0]
    x = ZeroPadding2D(k, s, x.shape, name=name + "_pad")(x)
    conv.padding = (0, 0)
    return _conv(conv, name, "valid")(x)


def _block(x: Any, block: Any, prefix: str, drop_rate: float) -> Any:
    inputs = x
    if hasattr(block, "conv_pwl"):  # InvertedResidual: expansion first
        x = _conv(block.conv_pw, prefix + "expand_conv", "same")(x)
        x = _bn_act(x, block.bn1, prefix + "expand_bn", prefix + "expand_activation")
        dw, dw_bn, pw, pw_bn = block.conv_dw, block.bn2, block.conv_pwl, block.bn3
    else:  # DepthwiseSeparableConv (expand ratio 1)
        dw, dw_bn, pw, pw_bn = block.conv_dw, block.bn1, block.conv_pw, block.bn2
    if dw.stride == (1, 1):
        x = _conv(dw, prefix + "dwconv", "same")(x)
    else:
        x = ZeroPadding2D(dw.kernel_size[0], dw.stride[0], x.shape, name=prefix + "dwconv_pad")(x)
        dw.padding = (0, 0)
        x = _conv(dw, prefix + "dwconv", "valid")(x)
    x = _bn_act(x, dw_bn, prefix + "bn", prefix + "activation")
    x = squeeze_excite(x, block.se, prefix)
    x = _conv(pw, prefix + "project_conv", "same")(x)
    x = _bn_act(x, pw_bn, prefix + "project_bn", None)
    return residual(x, inputs, block.has_skip, drop_rate, prefix)


def squeeze_excite(x: Any, se: nn.Module, prefix: str) -> Any:
    """Keras's ``se_squeeze``/``se_reshape``/``se_reduce``/``se_expand``/``se_excite``."""
    y = layers.GlobalAveragePooling2D(name=prefix + "se_squeeze")(x)
    y = layers.Reshape((1, 1, x.shape[-1]), name=prefix + "se_reshape")(y)
    y = _conv(se.conv_reduce, prefix + "se_reduce", "same", "swish")(y)
    y = _conv(se.conv_expand, prefix + "se_expand", "same", "sigmoid")(y)
    return layers.Multiply(name=prefix + "se_excite")([x, y])


def residual(x: Any, inputs: Any, skip: bool, drop_rate: float, prefix: str) -> Any:
    """A block's end: Keras's drop-connect ``*_drop`` (when its rate is not 0) and ``*_add``."""
    if skip:
        if drop_rate > 0:
            x = Dropout(drop_rate, name=prefix + "drop")(x)
        x = layers.Add(name=prefix + "add")([x, inputs])
    return x


def _normalization(x: Any, tm: nn.Module, weights: Any) -> Any:
    """Keras's ``rescaling`` + ``normalization`` (+ ``rescaling_1`` for ``"imagenet"``),
    holding the weights' normalisation (identity for ``weights=None``)."""
    x = layers.Rescaling(1.0 / 255.0)(x)
    norm = layers.Normalization()
    x = norm(x)
    if weights is None:
        return x
    mean = np.asarray(tm.pretrained_cfg["mean"], "float64")
    std = np.asarray(tm.pretrained_cfg["std"], "float64")
    # Keras's ImageNet file stores the std as the variance and rescaling_1 divides by its root.
    variance = std if weights == "imagenet" else std**2
    with torch.no_grad():
        norm.stats.mean.copy_(torch.from_numpy(mean).float())
        norm.stats.variance.copy_(torch.from_numpy(variance).float())
    if weights == "imagenet":
        x = Rescaling(1.0 / np.sqrt(std))(x)
    return x


def build_efficientnet(b: int, request: _common.Request) -> Model:
    size, dropout_rate = _PARAMS[b][2], _PARAMS[b][3]
    weights = request.weights
    with _common.keras_graph(request, f"tf_efficientnet_b{b}", size, 32) as (tm, inputs):
        x = _normalization(inputs, tm, weights)
        x = _strided(x, tm.conv_stem, "stem_conv")
        x = _bn_act(x, tm.bn1, "stem_bn", "stem_activation")
        total = sum(len(stage) for stage in tm.blocks)
        n = 0
        for i, stage in enumerate(tm.blocks):
            for j, block in enumerate(stage):
                x = _block(x, block, f"block{i + 1}{chr(j + 97)}_", _DROP_CONNECT_RATE * n / total)
                n += 1
        x = top(x, tm, request, dropout_rate)
        model = Model(inputs, x, name=request.name)
    return _common.finish_weights(model, weights)


def top(x: Any, tm: nn.Module, request: _common.Request, dropout_rate: float) -> Any:
    """Keras's ``top_conv``/``top_bn``/``top_activation``, then its classifier or pooling."""
    x = _conv(tm.conv_head, "top_conv", "same")(x)
    x = _bn_act(x, tm.bn2, "top_bn", "top_activation")
    if not request.include_top:
        return _common.global_pool(x, request.pooling, ("avg_pool", "max_pool"))
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if dropout_rate > 0:
        x = layers.Dropout(dropout_rate, name="top_dropout")(x)
    head = _common.prediction_layer(
        tm.classifier, request.weights, request.classes, request.classifier_activation
    )
    head.kernel_initializer = "zeros"  # built below, then drawn as Keras's
    x = head(x)
    head.kernel_initializer = DENSE_KERNEL_INITIALIZER
    if head.linear is not tm.classifier:  # a new head
        _common.keras_init_layer(head)
    return x


_B0_TO_B7 = _common.keras_applications(
    build_efficientnet, range(8), "EfficientNetB{}", "efficientnetb{}", "tf_efficientnet_b{}"
)
EfficientNetB0, EfficientNetB1, EfficientNetB2, EfficientNetB3 = _B0_TO_B7[:4]
EfficientNetB4, EfficientNetB5, EfficientNetB6, EfficientNetB7 = _B0_TO_B7[4:]
preprocess_input = convention(None, __name__)
