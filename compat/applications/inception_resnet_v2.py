"""InceptionResNetV2 (``keras.applications.inception_resnet_v2``) on timm's
``inception_resnet_v2`` module (``tf_in1k``: the TensorFlow-slim checkpoint Keras's weights
come from).

Same 780 layers (782 with the top), with Keras's names: the auto-generated ones of a fresh
Keras session for the unnamed ``conv2d_bn`` units (``conv2d``..., ``batch_normalization``...,
``activation``...) and for the ``custom_scale_layer`` residual sums, and the named
``mixed_*``, ``block35_*``/``block17_*``/``block8_*`` and ``conv_7b`` layers. timm's conv+BN
units are taken in Keras's construction order. Difference from Keras's architecture, kept
because it belongs to the torch weights: the BatchNormalization layers have a scale (gamma;
Keras uses ``scale=False``), so there are 30,272 more parameters (54,367,008 without the top
against Keras's 54,336,736). Inputs follow Keras's ``tf`` convention ([-1, 1]); the map to
the weights' normalisation (identity for timm's weights) is folded into the first ``conv2d``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compat import backend, layers
from compat.applications import _common
from compat.applications.imagenet_utils import convention
from compat.applications.imagenet_utils import decode_predictions as decode_predictions
from compat.applications.inception_v3 import _cat, _Units
from compat.layers.base import Layer, Shape
from compat.models import Model
from compat.ops import broadcast_shape


class CustomScaleLayer(Layer):
    """Keras's residual sum of an Inception-ResNet block: ``inputs[0] + inputs[1] * scale``."""

    def __init__(self, scale: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scale = scale

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        # in Keras's layout: inputs of different ranks broadcast over Keras's trailing axes
        # (a rank-4 tensor's channels), not over those of compat's NCHW view
        a, b = (backend.to_keras(t) for t in inputs[:2])
        return backend.to_internal(a + b * self.scale)

    def compute_output_shape(self, input_shape: list[Shape]) -> Shape:
        return broadcast_shape(list(input_shape[:2]), f"CustomScaleLayer '{self.name}'")

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "scale": self.scale}


# Keras's conv2d_bn arguments (filters, rows, cols) of each block type's branches.
_BRANCHES = {
    "block35": (((32, 1, 1),), ((32, 1, 1), (32, 3, 3)), ((32, 1, 1), (48, 3, 3), (64, 3, 3))),
    "block17": (((192, 1, 1),), ((128, 1, 1), (160, 1, 7), (192, 7, 1))),
    "block8": (((192, 1, 1),), ((192, 1, 1), (224, 1, 3), (256, 3, 1))),
}


def _chain(x: Any, c: _Units, units: tuple, strides: int = 1) -> Any:
    """A branch of ``conv2d_bn`` units; ``strides`` > 1: the last one is strided, 'valid'."""
    for i, (filters, rows, cols) in enumerate(units):
        if strides > 1 and i == len(units) - 1:
            x = c(x, filters, rows, cols, padding="valid", strides=(strides, strides))
        else:
            x = c(x, filters, rows, cols)
    return x


def _block(x: Any, c: _Units, block: nn.Module, block_type: str, idx: int, relu: bool) -> Any:
    branches = [_chain(x, c, units) for units in _BRANCHES[block_type]]
    name = f"{block_type}_{idx}"
    mixed = _cat(branches, f"{name}_mixed")
    up = layers.Conv2D.from_torch(block.conv2d, name=f"{name}_conv", padding="same")(mixed)
    x = CustomScaleLayer(block.scale)([x, up])
    return layers.Activation("relu", name=f"{name}_ac")(x) if relu else x


def _pool(x: Any) -> Any:
    return layers.MaxPooling2D(3, strides=2)(x)


def _build(img: Any, tm: nn.Module, c: _Units) -> Any:
    x = c(img, 32, 3, 3, strides=(2, 2), padding="valid")
    x = c(x, 32, 3, 3, padding="valid")
    x = _pool(c(x, 64, 3, 3))
    x = c(x, 80, 1, 1, padding="valid")
    x = _pool(c(x, 192, 3, 3, padding="valid"))
    b0 = c(x, 96, 1, 1)
    b1 = _chain(x, c, ((48, 1, 1), (64, 5, 5)))
    b2 = _chain(x, c, ((64, 1, 1), (96, 3, 3), (96, 3, 3)))
    pool = layers.AveragePooling2D(3, strides=1, padding="same")(x)  # zeros not counted
    x = _cat([b0, b1, b2, c(pool, 64, 1, 1)], "mixed_5b")
    for i, block in enumerate(tm.repeat, start=1):
        x = _block(x, c, block, "block35", i, True)
    b0 = _chain(x, c, ((384, 3, 3),), strides=2)
    b1 = _chain(x, c, ((256, 1, 1), (256, 3, 3), (384, 3, 3)), strides=2)
    x = _cat([b0, b1, _pool(x)], "mixed_6a")
    for i, block in enumerate(tm.repeat_1, start=1):
        x = _block(x, c, block, "block17", i, True)
    b0 = _chain(x, c, ((256, 1, 1), (384, 3, 3)), strides=2)
    b1 = _chain(x, c, ((256, 1, 1), (288, 3, 3)), strides=2)
    b2 = _chain(x, c, ((256, 1, 1), (288, 3, 3), (320, 3, 3)), strides=2)
    x = _cat([b0, b1, b2, _pool(x)], "mixed_7a")
    blocks = [*tm.repeat_2, tm.block8]
    for i, block in enumerate(blocks, start=1):
        x = _block(x, c, block, "block8", i, i < len(blocks))
    return c(x, 1536, 1, 1, name="conv_7b")


def build_inception_resnet_v2(request: _common.Request) -> Model:
    timm_name = "inception_resnet_v2.tf_in1k"
    with _common.keras_graph(request, timm_name, 299, 75) as (tm, inputs):
        x = _build(inputs, tm, _Units(tm))
        return _common.keras_model(inputs, x, request, tm.classif, pool_names=(None, None))


InceptionResNetV2 = _common.keras_application(
    build_inception_resnet_v2,
    "InceptionResNetV2",
    "inception_resnet_v2",
    "inception_resnet_v2.tf_in1k",
)
preprocess_input = convention("tf", __name__)
