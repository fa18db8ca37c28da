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

from compat import backend, layers
from compat.applications import _common
from compat.applications.imagenet_utils import Decoded, Preprocessed
from compat.applications.imagenet_utils import decode_predictions as _decode
from compat.applications.imagenet_utils import preprocess_input as _preprocess
from compat.models import Model


def _bn_relu(x: Any, bn: nn.Module, name: str) -> Any:
    x = layers.BatchNormalization.from_torch(_common.no_act_bn(bn), name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _conv(x: Any, conv: nn.Conv2d, name: str) -> Any:
    padding = "valid" if conv.kernel_size == (1, 1) else "same"
    return layers.Conv2D.from_torch(conv, name=name, padding=padding)(x)


def build_densenet(
    depth: int,
    *,
    include_top: bool,
    weights: Any,
    input_tensor: Any,
    input_shape: Any,
    pooling: str | None,
    classes: int,
    classifier_activation: Any,
    name: str,
) -> Model:
    _common.check_pooling(pooling)
    _common.check_input_shape(input_tensor, input_shape, 224, 32, include_top, weights)
    tm = _common.timm_model(f"densenet{depth}", weights, include_top, classes)
    f = tm.features
    with backend.canonical_names():
        inputs = _common.model_input(input_tensor, input_shape, 224, 32, include_top, weights)
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
        if include_top:
            x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
            x = _common.prediction_layer(tm.classifier, weights, classes, classifier_activation)(x)
        else:
            x = _common.global_pool(x, pooling, ("avg_pool", "max_pool"))
        model = Model(inputs, x, name=name)
    _common.finish_weights(model, weights)
    return model


def _builder(depth: int) -> Any:
    def builder(
        include_top: bool = True,
        weights: Any = "imagenet",
        input_tensor: Any = None,
        input_shape: Any = None,
        pooling: str | None = None,
        classes: int = 1000,
        classifier_activation: Any = "softmax",
        name: str = f"densenet{depth}",
    ) -> Model:
        return build_densenet(
            depth,
            include_top=include_top,
            weights=weights,
            input_tensor=input_tensor,
            input_shape=input_shape,
            pooling=pooling,
            classes=classes,
            classifier_activation=classifier_activation,
            name=name,
        )

    builder.__name__ = builder.__qualname__ = f"DenseNet{depth}"
    builder.__doc__ = f"Keras's ``DenseNet{depth}`` on timm's ``densenet{depth}`` (see module doc)."
    return builder


DenseNet121 = _builder(121)
DenseNet169 = _builder(169)
DenseNet201 = _builder(201)


def preprocess_input(x: Any, data_format: str | None = None) -> Preprocessed:
    """Keras's ``torch`` convention: ``x / 255`` then ImageNet mean/std."""
    return _preprocess(x, data_format=data_format, mode="torch")


def decode_predictions(preds: Any, top: int = 5) -> Decoded:
    """Keras's ``decode_predictions``: per sample, the top ``(wnid, short_name, score)``."""
    return _decode(preds, top=top)
