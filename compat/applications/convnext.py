"""ConvNeXtTiny/Small/Base/Large/XLarge (``keras.applications.convnext``) on timm's
``convnext_*`` modules with the weights Keras's come from (the official checkpoints: Tiny and
Small trained on ImageNet-1k, ``fb_in1k``; Base, Large and XLarge pre-trained on ImageNet-22k
then fine-tuned on 1k, ``fb_in22k_ft_in1k``).

Same layers (ConvNeXtTiny: 133 without the top, 135 with it), classes, names (prefixed by the
model's ``name`` as in Keras), order, output shapes, parameter counts and initialisation as
Keras, including its nested ``Sequential`` stem and down-sampling blocks and its headless
``layer_normalization`` (Keras normalises the feature map, or the pooled features, with the
head's LayerNorm when ``include_top=False``). As in Keras, preprocessing is part of the
model (``include_preprocessing=True``): ``preprocess_input`` is a pass-through, inputs are
RGB pixels in [0, 255] and ``*_prestem_normalization`` holds the weights' normalisation
(ImageNet mean/std, Keras's values). With ``include_preprocessing=False`` inputs are those
values already normalised, as in Keras.

One difference, from the graph rather than the weights: Keras adds each block's residual
with a tensor ``+`` (a graph operation, not a layer); compat's graph only holds layers, so the
block's ``*_identity`` layer (Keras's ``Activation("linear")``) takes the block input too and
outputs the sum (its output is Keras's ``+`` result; the layer list is Keras's).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from compat import layers
from compat.applications import _builtin_preprocessing, _common
from compat.applications.imagenet_utils import convention
from compat.applications.imagenet_utils import decode_predictions as decode_predictions
from compat.layers.base import Layer, Shape, Variable
from compat.models import Model, Sequential

# Keras's (timm weights tag) per model
_VARIANTS = {
    "tiny": "fb_in1k",
    "small": "fb_in1k",
    "base": "fb_in22k_ft_in1k",
    "large": "fb_in22k_ft_in1k",
    "xlarge": "fb_in22k_ft_in1k",
}
_LAYER_SCALE_INIT = 1e-6


class LayerScale(Layer):
    """Keras's ``LayerScale`` (``keras.applications.convnext``): ``x * gamma`` per channel."""

    def __init__(self, init_values: float, projection_dim: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.init_values = init_values
        self.projection_dim = projection_dim
        self.gamma: nn.Parameter | None = None

    def build(self, input_shape: Shape) -> None:
        self.gamma = nn.Parameter(torch.full((self.projection_dim,), float(self.init_values)))

    @classmethod
    def from_torch(cls, gamma: nn.Parameter, *, name: str) -> LayerScale:
        layer = cls(_LAYER_SCALE_INIT, gamma.shape[0], name=name)
        layer.gamma = gamma
        layer.built = True
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1, 1, 1) if x.ndim == 4 else (1, -1)
        return x * self.gamma.view(shape)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return input_shape

    def _own_variables(self) -> list[Variable]:
        return (
            [] if self.gamma is None else [Variable(self, "gamma", self, "gamma", trainable=True)]
        )

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "init_values": self.init_values,
            "projection_dim": self.projection_dim,
        }


class Activation(layers.Activation):
    """A block's ``*_identity`` ``Activation("linear")`` followed by the residual sum (Keras's
    ``inputs + x``, a graph operation that is no layer): called on ``[inputs, x]``."""

    keras_written_as = "Add"  # a Keras file holds the sum as an Add layer of that name

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("linear", **kwargs)

    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        shortcut, x = xs
        return shortcut + x

    def compute_output_shape(self, input_shape: list[Shape]) -> Shape:
        return input_shape[1]


def _norm(ln: nn.LayerNorm, name: str) -> layers.LayerNormalization:
    return layers.LayerNormalization.from_torch(ln, name=name)


def _block(x: Any, block: Any, name: str) -> Any:
    y = layers.Conv2D.from_torch(block.conv_dw, name=f"{name}_depthwise_conv", padding="same")(x)
    y = _norm(block.norm, f"{name}_layernorm")(y)
    y = layers.Dense.from_torch(block.mlp.fc1, name=f"{name}_pointwise_conv_1")(y)
    y = layers.Activation("gelu", name=f"{name}_gelu")(y)
    y = layers.Dense.from_torch(block.mlp.fc2, name=f"{name}_pointwise_conv_2")(y)
    y = LayerScale.from_torch(block.gamma, name=f"{name}_layer_scale")(y)
    return Activation(name=f"{name}_identity")([x, y])


def _head(x: Any, tm: nn.Module, request: _common.Request, name: str) -> Any:
    """Keras's ``Head`` (``*_head_gap``, ``*_head_layernorm``, ``*_head_dense``), or its
    headless end: ``pooling`` then an unnamed LayerNormalization (the head's)."""
    if not request.include_top:
        x = _common.global_pool(x, request.pooling, (None, None))
        return layers.LayerNormalization.from_torch(tm.head.norm, name=None)(x)
    x = layers.GlobalAveragePooling2D(name=f"{name}_head_gap")(x)
    x = _norm(tm.head.norm, f"{name}_head_layernorm")(x)
    fc, activation = tm.head.fc, request.classifier_activation
    if request.weights is not None and request.classes == fc.out_features:
        return layers.Dense.from_torch(fc, name=f"{name}_head_dense", activation=activation)(x)
    return layers.Dense(request.classes, activation=activation, name=f"{name}_head_dense")(x)


def keras_init(model: Model) -> None:
    """Keras's ``weights=None`` initialisation, nested ``Sequential`` blocks included:
    glorot-uniform kernels, zero biases, LayerNorm gamma 1 / beta 0, LayerScale 1e-6."""
    for layer in model.layers:
        if isinstance(layer, Model):
            keras_init(layer)
        elif isinstance(layer, layers.LayerNormalization):
            layer.norm.reset_parameters()
        elif isinstance(layer, LayerScale):
            with torch.no_grad():
                layer.gamma.fill_(layer.init_values)
        else:
            _common.keras_init_layer(layer)


def build_convnext(variant: str, request: _common.Request, include_preprocessing: bool) -> Model:
    name = request.name
    timm_name = f"convnext_{variant}.{_VARIANTS[variant]}"
    with _common.keras_graph(request, timm_name, 224, 32) as (tm, inputs):
        mean = [255.0 * m for m in tm.pretrained_cfg["mean"]]
        std = [255.0 * s for s in tm.pretrained_cfg["std"]]
        x = inputs
        if include_preprocessing:
            norm = layers.Normalization(
                mean=mean, variance=[s * s for s in std], name=f"{name}_prestem_normalization"
            )
            x = norm(x)
        stem_conv = layers.Conv2D.from_torch(tm.stem[0], name=f"{name}_stem_conv", padding="valid")
        if not include_preprocessing:  # Keras's normalised input, mapped to the weights'
            _common.map_input(stem_conv, _common.input_map("torch", tm))
        stem = Sequential(
            [stem_conv, _norm(tm.stem[1], f"{name}_stem_layernorm")], name=f"{name}_stem"
        )
        x = stem(x)
        for i, stage in enumerate(tm.stages):
            if i > 0:
                ln, conv = stage.downsample
                block = Sequential(
                    [
                        _norm(ln, f"{name}_downsampling_layernorm_{i - 1}"),
                        layers.Conv2D.from_torch(
                            conv, name=f"{name}_downsampling_conv_{i - 1}", padding="valid"
                        ),
                    ],
                    name=f"{name}_downsampling_block_{i - 1}",
                )
                x = block(x)
            for j, unit in enumerate(stage.blocks):
                x = _block(x, unit, f"{name}_stage_{i}_block_{j}")
        x = _head(x, tm, request, name)
        model = Model(inputs, x, name=name)
    if request.weights is None:
        keras_init(model)
        return model
    return _common.finish_weights(model, request.weights)


def _application(variant: str) -> Any:
    keras_name = f"ConvNeXt{variant.capitalize()}".replace("Xlarge", "XLarge")
    name, timm = f"convnext_{variant}", f"convnext_{variant}.{_VARIANTS[variant]}"
    build = functools.partial(build_convnext, variant)
    application = _builtin_preprocessing.keras_application
    return application(build, keras_name, name, timm, after="include_top")


preprocess_input = convention(None, __name__)
ConvNeXtTiny = _application("tiny")
ConvNeXtSmall = _application("small")
ConvNeXtBase = _application("base")
ConvNeXtLarge = _application("large")
ConvNeXtXLarge = _application("xlarge")
