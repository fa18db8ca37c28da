"""DenseNet121/169/201 (``keras.applications.densenet``) on timm's ``densenet121/169/201``.

Same layers (DenseNet121: 429 with the top, 427 without), names, order, output shapes and
parameter counts as Keras. Inputs follow Keras's ``torch`` convention (``x / 255`` then
ImageNet mean/std), which is also the weights' normalisation (the identity map is folded into
the first ``zero_padding2d``). The stem's 7x7 convolution and max-pool padding are Keras's
``zero_padding2d``/``zero_padding2d_1`` layers (the max-pool follows a ReLU, so zero padding
equals torch's -inf padding). Difference from Keras, kept because it belongs to the torch
weights: BatchNorm epsilon is 1e-5 (Keras 1.001e-5).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from compat import layers
from compat.applications import _common
from compat.applications.imagenet_utils import convention
from compat.applications.imagenet_utils import decode_predictions as decode_predictions
from compat.models import Model


def _bn_relu(x: Any, bn: nn.Module, name: str) -> Any:
    x = layers.BatchNormalization.from_torch(_common.no_act_bn(bn), name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _conv(x: Any, conv: nn.Conv2d, name: str) -> Any:
    padding = "valid" if conv.kernel_size == (1, 1) else "same"
    return layers.Conv2D.from_torch(conv, name=name, padding=padding)(x)


def build_densenet(depth: int, request: _common.Request) -> Model:
    with _common.keras_graph(request, f"densenet{depth}", 224, 32) as (tm, inputs):
        f = tm.features
        pad = layers.ZeroPadding2D(padding=((3, 3), (3, 3)))
        x = _common.map_input(pad, _common.input_map("torch", tm))(inputs)
        f.conv0.padding = (0, 0)
        x = layers.Conv2D.from_torch(f.conv0, name="conv1_conv", padding="valid")(x)
        x = _bn_relu(x, f.norm0, "conv1")
        x = layers.ZeroPadding2D(padding=((1, 1), (1, 1)))(x)
        x = layers.MaxPooling2D(3, strides=2, name="pool1")(x)
        for stage in range(1, 5):
            for i, unit in enumerate(getattr(f, f"denseblock{stage}").values(), start=1):
                prefix = f"conv{stage + 1}_block{i}"
                y = _bn_relu(x, unit.norm1, f"{prefix}_0")
                y = _conv(y, unit.conv1, f"{prefix}_1_conv")
                y = _bn_relu(y, unit.norm2, f"{prefix}_1")
                y = _conv(y, unit.conv2, f"{prefix}_2_conv")
                x = layers.Concatenate(axis=-1, name=f"{prefix}_concat")([x, y])
            if stage < 4:
                t, prefix = getattr(f, f"transition{stage}"), f"pool{stage + 1}"
                x = _bn_relu(x, t.norm, prefix)
                x = _conv(x, t.conv, f"{prefix}_conv")
                x = layers.AveragePooling2D(2, strides=2, name=f"{prefix}_pool")(x)
        x = layers.BatchNormalization.from_torch(_common.no_act_bn(f.norm5), name="bn")(x)
        x = layers.Activation("relu", name="relu")(x)
        return _common.keras_model(inputs, x, request, tm.classifier)


DenseNet121, DenseNet169, DenseNet201 = _common.keras_applications(
    build_densenet, (121, 169, 201), "DenseNet{}", "densenet{}", "densenet{}"
)
preprocess_input = convention("torch", __name__)
