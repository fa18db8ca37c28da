"""MobileNetV3Small/Large (``keras.applications.mobilenet_v3``) on timm's
``tf_mobilenetv3_small_100``/``tf_mobilenetv3_large_100`` (the ports of the TensorFlow
checkpoints Keras's weights come from).

Same layers (MobileNetV3Small: 164 with the top, 157 without; MobileNetV3Large: 194/187), names,
classes, order, output shapes and parameter counts as Keras. As in Keras, preprocessing is part
of the model: ``preprocess_input`` is a pass-through, inputs are RGB pixels in [0, 255] and the
``rescaling`` layer maps them to [-1, 1], the weights' own normalisation
(``include_preprocessing=False`` drops it: then feed [-1, 1]). As in Keras, the model takes any
image size, with the top too (the top is 1x1 convolutions after a global pooling).

Keras's hard sigmoid (the squeeze-excite gate) is ``ReLU(6.0)(x + 3.0) * (1 / 6)``, where only
the ``ReLU`` is a layer: here that ``re_lu_*`` layer computes the whole ``relu6(x + 3) / 6``.
Keras's ``Activation("hard_swish")`` layers are ``Activation`` layers computing
``x * relu6(x + 3) / 6``. The stride-2 layers pad as TensorFlow's ``'same'`` (the
``*_depthwise_pad`` layers computed from the actual size, as in
:mod:`compat.applications.efficientnet`; the same caveat on odd sizes of models built without a
size applies). No difference is forced by the torch weights. Only ``alpha=1.0`` and
``minimalistic=False`` are built.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from compat import activations, layers
from compat.applications import _common
from compat.applications.efficientnet import ZeroPadding2D
from compat.applications.imagenet_utils import convention
from compat.applications.imagenet_utils import decode_predictions as decode_predictions
from compat.models import Model


class Activation(layers.Activation):
    """Keras's ``Activation("hard_swish")``: ``x * relu6(x + 3) / 6``."""

    keras_written_as = "Activation"  # a Keras file holds it as that

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("linear", **kwargs)
        self.activation = "hard_swish"
        self._act = activations.get("hard_swish")  # a compat function: saved files load


class ReLU(layers.ReLU):
    """The ``ReLU(6.0)`` layer of Keras's hard sigmoid ``ReLU(6.0)(x + 3.0) * (1 / 6)``,
    computing the whole expression (Keras's ``+`` and ``*`` are not layers)."""

    # in a Keras file: relu6(x + 3) / 6 == ReLU(max_value=1)(x / 6 + 0.5)
    keras_written_as = "ReLU"
    keras_config: ClassVar[dict[str, Any]] = {"max_value": 1.0}
    keras_pre_layers: ClassVar[tuple] = (("Rescaling", {"scale": 1.0 / 6.0, "offset": 0.5}),)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(6.0, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.hardsigmoid(x)


def _act(x: Any, module: nn.Module) -> Any:
    """timm's activation as Keras's layer: ``ReLU()`` or ``Activation("hard_swish")``."""
    if isinstance(module, nn.ReLU):
        return layers.ReLU()(x)
    if isinstance(module, nn.Hardswish):
        return Activation()(x)
    raise NotImplementedError(f"MobileNetV3 activation {module!r}")


def _conv(conv: nn.Conv2d, name: str, padding: str = "same") -> Any:
    if type(conv) is not nn.Conv2d:  # timm's Conv2dSame: padded by the layer or the pad layer
        conv.__class__ = nn.Conv2d
    conv.padding = (0, 0)
    cls = layers.DepthwiseConv2D if conv.groups > 1 else layers.Conv2D
    return cls.from_torch(conv, name=name, padding=padding)


def _bn_act(x: Any, bn: Any, name: str) -> Any:
    act = bn.act
    x = layers.BatchNormalization.from_torch(_common.no_act_bn(bn), name=name)(x)
    return x if isinstance(act, nn.Identity) else _act(x, act)


def _block(x: Any, block: Any, block_id: int) -> Any:
    inputs = x
    prefix = f"expanded_conv_{block_id}_" if block_id else "expanded_conv_"
    if hasattr(block, "conv_pwl"):  # InvertedResidual: expansion first
        x = _conv(block.conv_pw, prefix + "expand")(x)
        x = _bn_act(x, block.bn1, prefix + "expand_bn")
        dw, dw_bn, pw, pw_bn = block.conv_dw, block.bn2, block.conv_pwl, block.bn3
    else:  # DepthwiseSeparableConv (expansion 1)
        dw, dw_bn, pw, pw_bn = block.conv_dw, block.bn1, block.conv_pw, block.bn2
    if dw.stride == (1, 1):
        x = _conv(dw, prefix + "depthwise")(x)
    else:
        k, s = dw.kernel_size[0], dw.stride[0]
        x = ZeroPadding2D(k, s, x.shape, name=prefix + "depthwise_pad")(x)
        x = _conv(dw, prefix + "depthwise", "valid")(x)
    x = _bn_act(x, dw_bn, prefix + "depthwise_bn")
    if not isinstance(block.se, nn.Identity):
        p = prefix + "squeeze_excite_"
        se = layers.GlobalAveragePooling2D(keepdims=True, name=p + "avg_pool")(x)
        se = _conv(block.se.conv_reduce, p + "conv")(se)
        se = layers.ReLU(name=p + "relu")(se)
        se = _conv(block.se.conv_expand, p + "conv_1")(se)
        se = ReLU()(se)
        x = layers.Multiply(name=p + "mul")([x, se])
    x = _conv(pw, prefix + "project")(x)
    x = layers.BatchNormalization.from_torch(_common.no_act_bn(pw_bn), name=prefix + "project_bn")(
        x
    )
    if block.has_skip:
        x = layers.Add(name=prefix + "add")([inputs, x])
    return x


def _logits(classifier: nn.Linear) -> nn.Conv2d:
    """timm's ``nn.Linear`` classifier as Keras's 1x1 ``logits`` convolution."""
    conv = nn.Conv2d(classifier.in_features, classifier.out_features, 1)
    with torch.no_grad():
        conv.weight.copy_(classifier.weight[:, :, None, None])
        conv.bias.copy_(classifier.bias)
    return conv


def build_mobilenet_v3(
    kind: str,
    *,
    input_shape: Any,
    alpha: float,
    minimalistic: bool,
    include_top: bool,
    weights: Any,
    input_tensor: Any,
    classes: int,
    pooling: str | None,
    dropout_rate: float,
    classifier_activation: Any,
    include_preprocessing: bool,
    name: str,
) -> Model:
    if alpha != 1.0 or minimalistic:
        raise NotImplementedError(
            f"MobileNetV3{kind.title()}(alpha={alpha}, minimalistic={minimalistic}): only "
            "alpha=1.0, minimalistic=False is built on timm's weights."
        )
    request = _common.Request.of(locals())
    # Keras: any size (at least 32), with the top too
    graph = _common.keras_graph(
        request, f"tf_mobilenetv3_{kind}_100", 224, 32, size_fixed_by_top=False
    )
    with graph as (tm, inputs):
        x = inputs
        if include_preprocessing:  # the weights' normalisation (mean = std = 0.5)
            x = layers.Rescaling(scale=1.0 / 127.5, offset=-1.0)(x)
        x = _conv(tm.conv_stem, "conv")(x)
        x = _bn_act(x, tm.bn1, "conv_bn")
        block_id = 0
        for stage in tm.blocks[:-1]:
            for block in stage:
                x = _block(x, block, block_id)
                block_id += 1
        last = tm.blocks[-1][0]  # timm's ConvBnAct: Keras's conv_1
        x = _conv(last.conv, "conv_1")(x)
        x = _bn_act(x, last.bn1, "conv_1_bn")
        if include_top:
            x = layers.GlobalAveragePooling2D(keepdims=True)(x)
            x = _conv(tm.conv_head, "conv_2")(x)
            x = _act(x, tm.act2)
            if dropout_rate > 0:
                x = layers.Dropout(dropout_rate)(x)
            if weights is not None and classes == tm.classifier.out_features:
                x = _conv(_logits(tm.classifier), "logits")(x)
            else:
                x = layers.Conv2D(classes, 1, padding="same", name="logits")(x)
            x = layers.Flatten()(x)
            x = layers.Activation(classifier_activation, name="predictions")(x)
        else:
            x = _common.global_pool(x, pooling, ("avg_pool", "max_pool"))
        model = Model(inputs, x, name=name)
    return _common.finish_weights(model, weights)


def _builder(kind: str) -> Any:
    def builder(
        input_shape: Any = None,
        alpha: float = 1.0,
        minimalistic: bool = False,
        include_top: bool = True,
        weights: Any = "imagenet",
        input_tensor: Any = None,
        classes: int = 1000,
        pooling: str | None = None,
        dropout_rate: float = 0.2,
        classifier_activation: Any = "softmax",
        include_preprocessing: bool = True,
        name: str = f"MobileNetV3{kind.title()}",
    ) -> Model:
        return build_mobilenet_v3(
            kind,
            input_shape=input_shape,
            alpha=alpha,
            minimalistic=minimalistic,
            include_top=include_top,
            weights=weights,
            input_tensor=input_tensor,
            classes=classes,
            pooling=pooling,
            dropout_rate=dropout_rate,
            classifier_activation=classifier_activation,
            include_preprocessing=include_preprocessing,
            name=name,
        )

    builder.__name__ = builder.__qualname__ = f"MobileNetV3{kind.title()}"
    builder.__doc__ = (
        f"Keras's ``MobileNetV3{kind.title()}`` on timm's ``tf_mobilenetv3_{kind}_100`` "
        "(see module doc)."
    )
    return builder


MobileNetV3Small = _builder("small")
MobileNetV3Large = _builder("large")


preprocess_input = convention(None, __name__)
