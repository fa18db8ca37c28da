"""VGG16 and VGG19 on timm's ``vgg16``/``vgg19`` modules.

Same layers, names and parameter counts as Keras (VGG16: 23 layers, 138,357,544 parameters
with the top; VGG19: 26 layers, 143,667,240). timm's ``fc1``/``fc2`` are 7x7/1x1
convolutions; they are converted to ``Dense`` layers whose kernels index the flattened
features in Keras's (channels-last) order. Inputs follow Keras's ``caffe`` convention (BGR,
ImageNet mean subtracted); the map to the torch weights' normalisation is folded into
``block1_conv1`` (see :class:`compat.applications._common.InputMap`). Headless models
(``include_top=False``) from ``weights=None`` or a file build timm's module without its
103M-parameter ``pre_logits`` (a one-channel stand-in, never used; a file's ``pre_logits`` is
skipped); ``weights="imagenet"`` loads timm's whole pretrained module.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from compat import layers
from compat.applications import _common
from compat.models import Model


def _linear_from_conv(conv: nn.Conv2d) -> nn.Linear:
    out_ch = conv.out_channels
    linear = nn.Linear(conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1], out_ch)
    with torch.no_grad():
        linear.weight.copy_(conv.weight.permute(0, 2, 3, 1).reshape(out_ch, -1))
        linear.bias.copy_(conv.bias)
    return linear


def build_vgg(timm_name: str, blocks: tuple[int, ...], request: _common.Request) -> Model:
    weights, name = request.weights, request.name
    # headless: timm's fc1/fc2 (pre_logits) are never used; draw one channel, not 4096
    unused_top = {} if request.include_top or weights == "imagenet" else {"mlp_ratio": 1 / 4096}
    with _common.keras_graph(request, timm_name, 224, 32, timm_kwargs=unused_top) as (
        tm,
        inputs,
    ):
        convs = [m for m in tm.features if isinstance(m, nn.Conv2d)]
        x = inputs
        i = 0
        for block, n in enumerate(blocks, start=1):
            for j in range(1, n + 1):
                layer = layers.Conv2D.from_torch(
                    convs[i], name=f"block{block}_conv{j}", padding="same", activation="relu"
                )
                if i == 0:
                    _common.map_input(layer, _common.input_map("caffe", tm))
                x = layer(x)
                i += 1
            x = layers.MaxPooling2D((2, 2), strides=(2, 2), name=f"block{block}_pool")(x)
        if request.include_top:
            x = layers.Flatten(name="flatten")(x)
            flat = x.shape[-1]
            fc1_conv = tm.pre_logits.fc1
            if flat == int(np.prod(fc1_conv.weight.shape[1:])):
                fc1 = layers.Dense.from_torch(
                    _linear_from_conv(fc1_conv), name="fc1", activation="relu"
                )
            elif weights is not None and not _common._is_compat_weights(weights):
                raise ValueError(
                    f"The top of these {name} weights takes 7x7x512 = "
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
            head = _common.prediction_layer(
                tm.head.fc, weights, request.classes, request.classifier_activation
            )
            x = head(x)
        else:
            x = _common.global_pool(x, request.pooling, (None, None))
        model = Model(inputs, x, name=name)
    return _common.finish_weights(model, weights)
