"""MobileNet v1 (``keras.applications.mobilenet``) on timm's ``mobilenetv1_100`` modules.

Same 86 layers (91 with the top), names, order, output shapes and parameter count as Keras
(4,253,864 with the top: the weights' ``Linear`` classifier becomes Keras's 1x1
``conv_preds`` convolution). Inputs follow Keras's ``tf`` convention ([-1, 1]), which is also
the weights' normalisation (mean = std = 0.5; the identity map is folded into ``conv1``).
Differences from Keras, kept because they belong to the torch weights: the stride-2
convolutions pad symmetrically (torch) where Keras pads the bottom/right of even sizes, so
``conv1`` pads (1, 1) and the ``conv_pad_*`` layers pad one pixel top/left instead (same
output shapes on even sizes; the sampling grid is shifted by one pixel, as the weights were
trained; on odd sizes compat's feature maps are one larger than Keras's, whose fixed
``((0, 1), (0, 1))`` padding loses the last row); BatchNorm epsilon is 1e-5 (Keras 1e-3).
Only ``alpha=1.0`` and ``depth_multiplier=1`` are built (timm's weights).
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
    return layers.ReLU(6.0, name=f"{name}_relu")(x)


def _block(x: Any, block: nn.Module, block_id: int) -> Any:
    dw = block.conv_dw
    if dw.stride == (2, 2):
        pads = tuple((1, 0) if s is not None and s % 2 == 0 else (1, 1) for s in x.shape[1:3])
        x = layers.ZeroPadding2D(padding=pads, name=f"conv_pad_{block_id}")(x)
        dw.padding = (0, 0)
        x = layers.DepthwiseConv2D.from_torch(dw, name=f"conv_dw_{block_id}", padding="valid")(x)
    else:
        x = layers.DepthwiseConv2D.from_torch(dw, name=f"conv_dw_{block_id}", padding="same")(x)
    x = _bn_relu(x, block.bn1, f"conv_dw_{block_id}")
    x = layers.Conv2D.from_torch(block.conv_pw, name=f"conv_pw_{block_id}", padding="same")(x)
    return _bn_relu(x, block.bn2, f"conv_pw_{block_id}")


def _conv_preds(fc: nn.Linear, weights: Any, classes: int) -> Any:
    """Keras's 1x1 ``conv_preds``: the weights' classifier when it fits, else a new one."""
    if weights is None or classes != fc.out_features:
        return layers.Conv2D(classes, (1, 1), padding="same", name="conv_preds")
    conv = nn.Conv2d(fc.in_features, fc.out_features, 1)
    conv.weight.data.copy_(fc.weight.data[:, :, None, None])
    conv.bias.data.copy_(fc.bias.data)
    return layers.Conv2D.from_torch(conv, name="conv_preds", padding="same")


def MobileNet(
    input_shape: Any = None,
    alpha: float = 1.0,
    depth_multiplier: int = 1,
    dropout: float = 1e-3,
    include_top: bool = True,
    weights: Any = "imagenet",
    input_tensor: Any = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: Any = "softmax",
    name: str | None = None,
) -> Model:
    if alpha != 1.0 or depth_multiplier != 1:
        raise NotImplementedError(
            f"MobileNet(alpha={alpha}, depth_multiplier={depth_multiplier}): only alpha=1.0 "
            "and depth_multiplier=1 are built on timm's weights."
        )
    request = _common.Request.of(locals())
    with _common.keras_graph(request, "mobilenetv1_100", 224, 32) as (tm, inputs):
        stem = layers.Conv2D.from_torch(tm.conv_stem, name="conv1", padding="same")
        x = _common.map_input(stem, _common.input_map("tf", tm))(inputs)
        x = _bn_relu(x, tm.bn1, "conv1")
        blocks = [block for stage in tm.blocks for block in stage]
        for block_id, block in enumerate(blocks, start=1):
            x = _block(x, block, block_id)
        if include_top:
            x = layers.GlobalAveragePooling2D(keepdims=True)(x)
            x = layers.Dropout(dropout, name="dropout")(x)
            x = _conv_preds(tm.classifier, weights, classes)(x)
            x = layers.Reshape((classes,), name="reshape_2")(x)
            x = layers.Activation(classifier_activation, name="predictions")(x)
        else:
            x = _common.global_pool(x, pooling, (None, None))
        model = Model(inputs, x, name=name or f"mobilenet_1.00_{inputs.shape[1]}")
    return _common.finish_weights(model, weights)


preprocess_input = convention("tf", __name__)
