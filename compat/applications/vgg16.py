"""VGG16 (``keras.applications.vgg16``) on timm's ``vgg16`` modules.

Same 23 layers, names and parameter count as Keras (138,357,544 with the top). timm's
``fc1``/``fc2`` are 7x7/1x1 convolutions; they are converted to ``Dense`` layers whose
kernels index the flattened features in Keras's (channels-last) order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from compat import backend, layers
from compat.applications import _common
from compat.applications.imagenet_utils import decode_predictions as _decode
from compat.applications.imagenet_utils import preprocess_input as _preprocess
from compat.models import Model


def _linear_from_conv(conv: nn.Conv2d) -> nn.Linear:
    out_ch = conv.out_channels
    linear = nn.Linear(conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1], out_ch)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.permute(0, 2, 3, 1).reshape(out_ch, -1))
        linear.bias.copy_(conv.bias)
    return linear


def VGG16(
    include_top: bool = True,
    weights: Any = "imagenet",
    input_tensor: Any = None,
    input_shape: Any = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: Any = "softmax",
    name: str = "vgg16",
) -> Model:
    _common.check_pooling(pooling)
    _common.check_input_shape(input_tensor, input_shape, 224, 32, include_top, weights)
    tm = _common.timm_model("vgg16", weights, include_top, classes)
    with backend.canonical_names():
        inputs = _common.model_input(input_tensor, input_shape, 224, 32, include_top, weights)
        convs = [m for m in tm.features if isinstance(m, nn.Conv2d)]
        x = inputs
        i = 0
        for block, n in enumerate((2, 2, 3, 3, 3), start=1):
            for j in range(1, n + 1):
                layer = layers.Conv2D.from_torch(
                    convs[i], name=f"block{block}_conv{j}", padding="same", activation="relu"
                )
                x = layer(x)
                i += 1
            x = layers.MaxPooling2D((2, 2), strides=(2, 2), name=f"block{block}_pool")(x)
        if include_top:
            x = layers.Flatten(name="flatten")(x)
            flat = x.shape[-1]
            fc1_conv = tm.pre_logits.fc1
            if flat == int(np.prod(fc1_conv.weight.shape[1:])):
                fc1 = layers.Dense.from_torch(
                    _linear_from_conv(fc1_conv), name="fc1", activation="relu"
                )
            elif weights is not None and not _common._is_compat_weights(weights):
                raise ValueError(
                    f"The top of these VGG16 weights takes 7x7x512 = "
                    f"{int(np.prod(fc1_conv.weight.shape[1:]))} features (224x224 images); "
                    f"input_shape={tuple(inputs.shape[1:])} gives {flat}. Use "
                    "include_top=False with a new head, or input_shape=(224, 224, 3)."
                )
            else:
                fc1 = layers.Dense(4096, activation="relu", name="fc1")
            x = fc1(x)
            x = layers.Dense.from_torch(
                _linear_from_conv(tm.pre_logits.fc2), name="fc2", activation="relu"
            )(x)
            x = _common.prediction_layer(tm.head.fc, weights, classes, classifier_activation)(x)
        else:
            x = _common.global_pool(x, pooling, (None, None))
        model = Model(inputs, x, name=name)
    _common.finish_weights(model, weights)
    return model


def preprocess_input(x: Any, data_format: str | None = None) -> np.ndarray:
    """Keras's ``caffe`` convention (RGB->BGR, ImageNet mean subtracted, no scaling)."""
    return _preprocess(x, data_format=data_format, mode="caffe")


def decode_predictions(preds: Any, top: int = 5) -> list:
    return _decode(preds, top=top)
