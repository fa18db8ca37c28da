"""Xception (``keras.applications.xception``) on timm's ``legacy_xception`` modules.

Same 132 layers (134 with the top), names (the residual branches' auto-generated
``conv2d``/``batch_normalization``/``add`` names of a fresh Keras session), order, output
shapes and parameter count (22,910,480 with the top) as Keras. Inputs follow Keras's ``tf``
convention ([-1, 1]), which is also the weights' normalisation (mean = std = 0.5; the
identity map is folded into ``block1_conv1``). Differences from Keras, kept because they belong
to the torch weights: the stride-2 ``block*_pool`` max-pools pad one pixel on every side
(torch's ``MaxPool2d(3, 2, padding=1)``) where Keras's ``'same'`` pads only the bottom/right of
even sizes (same output shapes; on even sizes the windows are shifted by one pixel, as the
weights were trained), and BatchNorm epsilon is 1e-5 (Keras 1e-3).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from compat import backend, layers
from compat.applications import _common
from compat.applications.imagenet_utils import convention
from compat.applications.imagenet_utils import decode_predictions as decode_predictions
from compat.models import Model


class MaxPooling2D(layers.MaxPooling2D):
    """Keras's ``MaxPooling2D(3, 2, padding="same")`` shape, torch's symmetric padding."""

    # In a Keras file: the maximum over each 3x3 neighbourhood ('same' at stride 1 pads
    # (1, 1), which a maximum ignores, as torch's padding), then every stride-th of them.
    keras_written_as = "MaxPooling2D"
    keras_config: ClassVar[dict[str, Any]] = {"pool_size": (1, 1), "padding": "valid"}

    @property
    def keras_pre_layers(self) -> tuple:
        return (
            ("MaxPooling2D", {"pool_size": self.pool_size, "strides": (1, 1), "padding": "same"}),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x, self.pool_size, self.strides, padding=1)


def _sep(x: Any, sep: nn.Module, name: str) -> Any:
    return layers.SeparableConv2D.from_torch(sep.conv1, sep.pointwise, name=name, padding="same")(x)


def _bn(x: Any, bn: nn.Module, name: str | None) -> Any:
    name = name or backend.unique_name("batch_normalization")
    return layers.BatchNormalization.from_torch(bn, name=name)(x)


def _block(x: Any, block: nn.Module, k: int) -> Any:
    """timm's ``block{k-1}`` as Keras's ``block{k}``: relu/sepconv/bn units, with a pool and
    a strided 1x1 residual convolution (built first, as Keras does) where they exist. A ReLU
    is named after the sepconv it precedes (block2's only one: ``block2_sepconv2_act``)."""
    if block.skip is not None:
        residual = layers.Conv2D.from_torch(
            block.skip, name=backend.unique_name("conv2d"), padding="same"
        )(x)
        residual = _bn(residual, block.skipbn, None)
    else:
        residual = x
    j = 1
    for m in block.rep:
        if isinstance(m, nn.ReLU):
            x = layers.Activation("relu", name=f"block{k}_sepconv{j}_act")(x)
        elif isinstance(m, nn.BatchNorm2d):
            x = _bn(x, m, f"block{k}_sepconv{j}_bn")
            j += 1
        elif isinstance(m, nn.MaxPool2d):
            x = MaxPooling2D((3, 3), strides=(2, 2), padding="same", name=f"block{k}_pool")(x)
        else:
            x = _sep(x, m, f"block{k}_sepconv{j}")
    return layers.Add(name=backend.unique_name("add"))([x, residual])


def build_xception(request: _common.Request) -> Model:
    with _common.keras_graph(request, "legacy_xception", 299, 71) as (tm, inputs):
        stem = layers.Conv2D.from_torch(tm.conv1, name="block1_conv1", padding="valid")
        x = _common.map_input(stem, _common.input_map("tf", tm))(inputs)
        x = _bn(x, tm.bn1, "block1_conv1_bn")
        x = layers.Activation("relu", name="block1_conv1_act")(x)
        x = layers.Conv2D.from_torch(tm.conv2, name="block1_conv2", padding="valid")(x)
        x = _bn(x, tm.bn2, "block1_conv2_bn")
        x = layers.Activation("relu", name="block1_conv2_act")(x)
        for i in range(1, 13):
            x = _block(x, getattr(tm, f"block{i}"), i + 1)
        x = _sep(x, tm.conv3, "block14_sepconv1")
        x = _bn(x, tm.bn3, "block14_sepconv1_bn")
        x = layers.Activation("relu", name="block14_sepconv1_act")(x)
        x = _sep(x, tm.conv4, "block14_sepconv2")
        x = _bn(x, tm.bn4, "block14_sepconv2_bn")
        x = layers.Activation("relu", name="block14_sepconv2_act")(x)
        return _common.keras_model(inputs, x, request, tm.fc, pool_names=(None, None))


Xception = _common.keras_application(build_xception, "Xception", "xception", "legacy_xception")
preprocess_input = convention("tf", __name__)
