"""EfficientNetV2B0-B3/S/M/L (``keras.applications.efficientnet_v2``) on timm's
``tf_efficientnetv2_*`` modules (ports of the TensorFlow checkpoints Keras's weights come
from: ImageNet-1k, timm's ``in1k``), with TensorFlow's ``'same'`` padding.

Same layers (EfficientNetV2B0: 270 without the top, 273 with it), names, order, output shapes,
parameter counts and initialisation as Keras. As in Keras, preprocessing is part of the model
(``include_preprocessing=True``): ``preprocess_input`` is a pass-through and inputs are RGB
pixels in [0, 255]. B0-B3: ``rescaling`` (1/255) and ``normalization`` (ImageNet mean/std,
Keras's values and the weights'). S/M/L: Keras's ``rescaling`` is ``x / 128 - 1``; the
weights were trained on ``x / 127.5 - 1``, which the layer holds when weights are loaded
(``scale`` 1/127.5; Keras's 1/128 with ``weights=None``). With ``include_preprocessing=False``
inputs are those of Keras's preprocessing output: ImageNet mean/std normalised for B0-B3,
[-1, 1] (``x / 127.5 - 1``) for S/M/L, mapped to the weights' inside ``stem_conv``.
Strided convolutions pad as Keras's ``'same'`` (TensorFlow's, from the actual size).
The drop-connect ``*_drop`` layers are Keras's ``Dropout(noise_shape=(None, 1, 1, 1))`` with
Keras's rates. No difference is forced by the torch weights.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from torch import nn

from compat import layers
from compat.applications import _builtin_preprocessing, _common, efficientnet
from compat.applications.efficientnet import _bn_act, residual, squeeze_excite
from compat.applications.imagenet_utils import convention
from compat.applications.imagenet_utils import decode_predictions as decode_predictions
from compat.models import Model

_DROP_CONNECT_RATE = 0.2
_DROPOUT = 0.2

# Keras's default size and its count of blocks before depth scaling (the drop-connect
# rates' denominator) per model.
_PARAMS = {
    "b0": (224, 21),
    "b1": (240, 21),
    "b2": (260, 21),
    "b3": (300, 21),
    "s": (384, 40),
    "m": (480, 57),
    "l": (480, 79),
}


def _conv(conv: nn.Conv2d, name: str, activation: Any = None) -> Any:
    if conv.stride != (1, 1) and tuple(conv.padding) != (0, 0):
        raise RuntimeError(f"{name}: expected timm's Conv2dSame (TensorFlow padding)")
    return efficientnet._conv(conv, name, "same", activation, strided_same=True)


def _block(x: Any, block: Any, prefix: str, drop_rate: float) -> Any:
    """timm's ConvBnAct / EdgeResidual / InvertedResidual as Keras's FusedMBConv (expansion
    1 / more) / MBConv block."""
    inputs = x
    if hasattr(block, "conv"):  # ConvBnAct: Keras's FusedMBConv without expansion
        x = _conv(block.conv, prefix + "project_conv")(x)
        x = _bn_act(x, block.bn1, prefix + "project_bn", prefix + "project_activation")
        return residual(x, inputs, block.has_skip, drop_rate, prefix)
    if hasattr(block, "conv_exp"):  # EdgeResidual: FusedMBConv
        x = _conv(block.conv_exp, prefix + "expand_conv")(x)
        x = _bn_act(x, block.bn1, prefix + "expand_bn", prefix + "expand_activation")
        if not isinstance(block.se, nn.Identity):  # Keras's fused blocks have none
            raise NotImplementedError(f"{prefix}: squeeze-excite in a fused block")
        pw, pw_bn = block.conv_pwl, block.bn2
    else:  # InvertedResidual: MBConv
        x = _conv(block.conv_pw, prefix + "expand_conv")(x)
        x = _bn_act(x, block.bn1, prefix + "expand_bn", prefix + "expand_activation")
        x = _conv(block.conv_dw, prefix + "dwconv2")(x)
        x = _bn_act(x, block.bn2, prefix + "bn", prefix + "activation")
        x = squeeze_excite(x, block.se, prefix)
        pw, pw_bn = block.conv_pwl, block.bn3
    x = _conv(pw, prefix + "project_conv")(x)
    x = _bn_act(x, pw_bn, prefix + "project_bn", None)
    return residual(x, inputs, block.has_skip, drop_rate, prefix)


def _preprocessing(x: Any, variant: str, tm: nn.Module, weights: Any) -> Any:
    """Keras's built-in preprocessing, holding the weights' normalisation."""
    mean = np.asarray(tm.pretrained_cfg["mean"], "float64")
    std = np.asarray(tm.pretrained_cfg["std"], "float64")
    if variant.startswith("b"):
        x = layers.Rescaling(1.0 / 255.0)(x)
        return layers.Normalization(mean=list(mean), variance=list(std**2))(x)
    if weights is None:  # Keras's values
        return layers.Rescaling(1.0 / 128.0, offset=-1.0)(x)
    if np.ptp(mean) or np.ptp(std):
        raise NotImplementedError(f"per-channel normalisation of {tm.pretrained_cfg['tag']}")
    return layers.Rescaling(1.0 / (255.0 * std[0]), offset=-mean[0] / std[0])(x)


def build_efficientnet_v2(
    variant: str, request: _common.Request, include_preprocessing: bool
) -> Model:
    size, base_blocks = _PARAMS[variant]
    with _common.keras_graph(request, f"tf_efficientnetv2_{variant}.in1k", size, 32) as (
        tm,
        inputs,
    ):
        x = inputs
        if include_preprocessing:
            x = _preprocessing(x, variant, tm, request.weights)
        stem = _conv(tm.conv_stem, "stem_conv")
        if not include_preprocessing:
            mode = "torch" if variant.startswith("b") else "tf"
            _common.map_input(stem, _common.input_map(mode, tm))
        x = _bn_act(stem(x), tm.bn1, "stem_bn", "stem_activation")
        n = 0
        for i, stage in enumerate(tm.blocks):
            for j, block in enumerate(stage):
                rate = _DROP_CONNECT_RATE * n / base_blocks
                x = _block(x, block, f"block{i + 1}{chr(j + 97)}_", rate)
                n += 1
        x = efficientnet.top(x, tm, request, _DROPOUT)
        model = Model(inputs, x, name=request.name)
    return _common.finish_weights(model, request.weights)


def _application(variant: str) -> Any:
    build = functools.partial(build_efficientnet_v2, variant)
    return _builtin_preprocessing.keras_application(
        build,
        f"EfficientNetV2{variant.upper()}",
        f"efficientnetv2-{variant}",
        f"tf_efficientnetv2_{variant}.in1k",
        after="classifier_activation",
    )


EfficientNetV2B0 = _application("b0")
EfficientNetV2B1 = _application("b1")
EfficientNetV2B2 = _application("b2")
EfficientNetV2B3 = _application("b3")
EfficientNetV2S = _application("s")
EfficientNetV2M = _application("m")
EfficientNetV2L = _application("l")
preprocess_input = convention(None, __name__)
