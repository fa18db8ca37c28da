"""MobileNetV2 (``keras.applications.mobilenet_v2``) on timm's ``mobilenetv2_100`` modules.

Same 156 layers (154 without the top), names, order, output shapes and parameter count as
Keras (3,538,984 with the top, convolutions without bias as in Keras). Inputs follow Keras's
``tf`` convention ([-1, 1]); the map to the torch weights' normalisation (ImageNet mean/std)
is folded into ``Conv1``. Differences from Keras, kept because they belong to the torch
weights: the stride-2 convolutions pad symmetrically (torch) where Keras pads the bottom/right
of even sizes, so ``Conv1`` and the ``block_*_pad`` layers pad one pixel top/left instead
(same output shapes; the sampling grid is shifted by one pixel, as the weights were trained);
BatchNorm epsilon is 1e-5 (Keras 1e-3). Built without an input size, Keras pads as for
even sizes, so on odd sizes its feature maps are one smaller than those of the same Keras model
built for that size; compat's always match the latter (torch's padding). Only ``alpha=1.0``
is built (timm's other widths round channels differently from Keras).
"""

from __future__ import annotations

from typing import Any

from compat import layers
from compat.applications import _common
from compat.applications.imagenet_utils import convention
from compat.applications.imagenet_utils import decode_predictions as decode_predictions
from compat.models import Model


def _bn(bn: Any, name: str) -> Any:
    return layers.BatchNormalization.from_torch(_common.no_act_bn(bn), name=name)


def _stride2_pad(x: Any, name: str) -> Any:
    """torch's symmetric padding of a 3x3 stride-2 convolution, as a Keras-shaped layer: on an
    even size the bottom/right pad is never read, so it is left out (Keras's output shape)."""
    pads = []
    for size in x.shape[1:3]:
        pads.append((1, 0) if size is not None and size % 2 == 0 else (1, 1))
    return layers.ZeroPadding2D(padding=tuple(pads), name=name)(x)


def _block(x: Any, block: Any, block_id: int) -> Any:
    inputs = x
    if block_id:
        prefix = f"block_{block_id}_"
        x = layers.Conv2D.from_torch(block.conv_pw, name=prefix + "expand", padding="same")(x)
        x = _bn(block.bn1, prefix + "expand_BN")(x)
        x = layers.ReLU(6.0, name=prefix + "expand_relu")(x)
        dw, dw_bn, pw, pw_bn = block.conv_dw, block.bn2, block.conv_pwl, block.bn3
    else:
        prefix = "expanded_conv_"
        dw, dw_bn, pw, pw_bn = block.conv_dw, block.bn1, block.conv_pw, block.bn2
    if dw.stride[0] == 2:
        x = _stride2_pad(x, prefix + "pad")
        dw.padding = (0, 0)
        x = layers.DepthwiseConv2D.from_torch(dw, name=prefix + "depthwise", padding="valid")(x)
    else:
        x = layers.DepthwiseConv2D.from_torch(dw, name=prefix + "depthwise", padding="same")(x)
    x = _bn(dw_bn, prefix + "depthwise_BN")(x)
    x = layers.ReLU(6.0, name=prefix + "depthwise_relu")(x)
    x = layers.Conv2D.from_torch(pw, name=prefix + "project", padding="same")(x)
    x = _bn(pw_bn, prefix + "project_BN")(x)
    if inputs.shape[-1] == x.shape[-1] and dw.stride[0] == 1:
        return layers.Add(name=prefix + "add")([inputs, x])
    return x


def MobileNetV2(
    input_shape: Any = None,
    alpha: float = 1.0,
    include_top: bool = True,
    weights: Any = "imagenet",
    input_tensor: Any = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: Any = "softmax",
    name: str | None = None,
) -> Model:
    if alpha != 1.0:
        raise NotImplementedError(
            f"MobileNetV2(alpha={alpha}): only alpha=1.0 is built on timm's weights."
        )
    request = _common.Request.of(locals())
    with _common.keras_graph(request, "mobilenetv2_100", 224, 32) as (tm, inputs):
        stem = layers.Conv2D.from_torch(tm.conv_stem, name="Conv1", padding="same")
        x = _common.map_input(stem, _common.input_map("tf", tm))(inputs)
        x = _bn(tm.bn1, "bn_Conv1")(x)
        x = layers.ReLU(6.0, name="Conv1_relu")(x)
        block_id = 0
        for stage in tm.blocks:
            for block in stage:
                x = _block(x, block, block_id)
                block_id += 1
        x = layers.Conv2D.from_torch(tm.conv_head, name="Conv_1", padding="valid")(x)
        x = _bn(tm.bn2, "Conv_1_bn")(x)
        x = layers.ReLU(6.0, name="out_relu")(x)
        x = _common.classifier_or_pool(
            x, request, tm.classifier, avg_pool_name=None, pool_names=(None, None)
        )
        model = Model(inputs, x, name=name or f"mobilenetv2_1.00_{inputs.shape[1]}")
    return _common.finish_weights(model, weights)


preprocess_input = convention("tf", __name__)
