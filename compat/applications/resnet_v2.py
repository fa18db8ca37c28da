"""ResNet50V2/101V2/152V2 (``keras.applications.resnet_v2``) on timm's pre-activation
``resnetv2_50/101/152`` modules.

Same layers (ResNet50V2: 192, 190 without the top; ResNet101V2: 379; ResNet152V2: 566), names,
classes and order as Keras. Inputs follow Keras's ``tf`` convention ([-1, 1]), which is also the
timm weights' normalisation (mean = std = 0.5; the identity map is folded into ``conv1_pad``).
Differences from Keras's architecture, kept because they belong to the torch weights:

- the down-sampling stride sits in the *first* block of ``conv3``/``conv4``/``conv5`` (on
  ``*_block1_0_conv`` and ``*_block1_2_conv``), where Keras strides the *last* block of
  ``conv2``/``conv3``/``conv4`` (its ``_2_conv`` and a ``MaxPooling2D(1, strides=2)``
  shortcut). Keras's three shortcut ``max_pooling2d*`` layers are kept, with stride 1 (the
  identity), so layer names and count match; the layers between the two stride positions
  output other spatial sizes (the final feature map has Keras's size);
- convolutions have no bias (Keras's ``conv1_conv``, ``*_0_conv`` and ``*_3_conv`` have one:
  ResNet50V2 has 25,594,792 parameters here against Keras's 25,613,800);
- ``pool1_pad`` pads with -inf, as torch's max-pool (the stem has no ReLU before it, so zero
  padding would change the result); as no Keras layer pads with -inf, a Keras file written
  from this model holds it as ``keras.ops.pad(..., constant_values=-inf)``, an operation
  node named ``pool1_pad``: the exact computation, so the model Keras reads has one layer
  fewer (191 for ResNet50V2);
- BatchNorm epsilon is 1e-5 (Keras 1.001e-5).

timm has no ImageNet weights for ``resnetv2_152``: ``ResNet152V2(weights="imagenet")`` fails
there; ``weights=None`` and weight files work.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compat import layers
from compat.applications import _common
from compat.applications.imagenet_utils import convention
from compat.applications.imagenet_utils import decode_predictions as decode_predictions
from compat.models import Model
from compat.ops import PadOperation


class ZeroPadding2D(layers.ZeroPadding2D):
    """Keras's ``pool1_pad`` (class ``ZeroPadding2D``) padding with -inf, as torch's
    ``MaxPool2d(padding=1)`` the weights were trained with."""

    def keras_operation(self) -> PadOperation:
        """No Keras layer pads with -inf: a Keras file holds it as ``keras.ops.pad(x, ...,
        constant_values=-inf)``, an operation node of this name (not a layer of the model
        Keras reads)."""
        (t, b), (left, r) = self.padding
        pad_width = [[0, 0], [t, b], [left, r], [0, 0]]
        return PadOperation(pad_width, constant_values=float("-inf"), name=self.name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (t, b), (left, r) = self.padding
        return F.pad(x, (left, r, t, b), value=float("-inf"))


def _bn(x: Any, bn: nn.Module, name: str) -> Any:
    return layers.BatchNormalization.from_torch(_common.no_act_bn(bn), name=name)(x)


def _conv(x: Any, conv: nn.Conv2d, name: str) -> Any:
    return layers.Conv2D.from_torch(conv, name=name, padding="valid")(x)


def _block(x: Any, block: Any, name: str, keras_pool: bool) -> Any:
    preact = _bn(x, block.norm1, f"{name}_preact_bn")
    preact = layers.Activation("relu", name=f"{name}_preact_relu")(preact)
    if block.downsample is not None:
        shortcut = _conv(preact, block.downsample.conv, f"{name}_0_conv")
    elif keras_pool:  # Keras's strided shortcut; the stride is in block1 here (module doc)
        shortcut = layers.MaxPooling2D(1, strides=1)(x)
    else:
        shortcut = x
    y = _conv(preact, block.conv1, f"{name}_1_conv")
    y = _bn(y, block.norm2, f"{name}_1_bn")
    y = layers.Activation("relu", name=f"{name}_1_relu")(y)
    y = layers.ZeroPadding2D(padding=((1, 1), (1, 1)), name=f"{name}_2_pad")(y)
    block.conv2.padding = (0, 0)
    y = _conv(y, block.conv2, f"{name}_2_conv")
    y = _bn(y, block.norm3, f"{name}_2_bn")
    y = layers.Activation("relu", name=f"{name}_2_relu")(y)
    y = _conv(y, block.conv3, f"{name}_3_conv")
    return layers.Add(name=f"{name}_out")([shortcut, y])


def _linear(fc: nn.Module) -> nn.Linear:
    """timm's 1x1-convolution classifier as the ``nn.Linear`` of Keras's ``predictions``."""
    linear = nn.Linear(fc.in_channels, fc.out_channels)
    with torch.no_grad():
        linear.weight.copy_(fc.weight.flatten(1))
        linear.bias.copy_(fc.bias)
    return linear


def build_resnet_v2(depth: int, request: _common.Request) -> Model:
    with _common.keras_graph(request, f"resnetv2_{depth}", 224, 32) as (tm, inputs):
        pad = layers.ZeroPadding2D(padding=((3, 3), (3, 3)), name="conv1_pad")
        x = _common.map_input(pad, _common.input_map("tf", tm))(inputs)
        tm.stem.conv.padding = (0, 0)
        x = _conv(x, tm.stem.conv, "conv1_conv")
        x = ZeroPadding2D(padding=((1, 1), (1, 1)), name="pool1_pad")(x)
        x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
        for s, stage in enumerate(tm.stages):
            n = len(stage.blocks)
            for b, block in enumerate(stage.blocks, start=1):
                keras_pool = b == n and s < len(tm.stages) - 1
                x = _block(x, block, f"conv{s + 2}_block{b}", keras_pool)
        x = _bn(x, tm.norm, "post_bn")
        x = layers.Activation("relu", name="post_relu")(x)
        return _common.keras_model(inputs, x, request, _linear(tm.head.fc))


ResNet50V2, ResNet101V2, ResNet152V2 = _common.keras_applications(
    build_resnet_v2, (50, 101, 152), "ResNet{}V2", "resnet{}v2", "resnetv2_{}"
)
preprocess_input = convention("tf", __name__)
