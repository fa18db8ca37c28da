"""InceptionV3 (``keras.applications.inception_v3``) on timm's ``inception_v3`` modules.

Same 313 layers (311 without the top), with the auto-generated names of a fresh Keras
session (``conv2d``...``conv2d_93``, ``batch_normalization_*``, ``activation_*``,
``mixed0``...``mixed10``). timm's 94 conv+BN units are taken in Keras's construction order.
Differences from Keras's architecture, kept because they belong to the torch weights: the
BatchNormalization layers have a scale (gamma; Keras uses ``scale=False``), so there are
17,216 more parameters (23,869,000 against Keras's 23,851,784), and the branch
average-pools count the padded zeros
(torchvision/timm semantics; Keras's ``'same'`` average pooling does not). Inputs follow
Keras's ``tf`` convention ([-1, 1]); the map to the weights' normalisation (identity for
timm's default ``inception_v3`` weights) is folded into the first ``conv2d``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import nn

from compat import backend, layers
from compat.applications import _common
from compat.applications.imagenet_utils import convention
from compat.applications.imagenet_utils import decode_predictions as decode_predictions
from compat.models import Model


class _Units:
    def __init__(self, model: nn.Module) -> None:
        self._map: Any = _common.input_map("tf", model)
        self._it: Iterator[nn.Module] = iter(
            [m for m in model.modules() if hasattr(m, "conv") and hasattr(m, "bn")]
        )

    def __call__(
        self,
        x: Any,
        filters: int,
        rows: int,
        cols: int,
        padding: str = "same",
        strides: tuple[int, int] = (1, 1),
        name: str | None = None,
    ) -> Any:
        """Keras's ``conv2d_bn`` on timm's next unit (``name``: Keras's ``name``,
        ``name_bn``, ``name_ac``; else the session's auto-generated names)."""
        unit = next(self._it)
        conv = unit.conv
        if (conv.out_channels, tuple(conv.kernel_size), tuple(conv.stride)) != (
            filters,
            (rows, cols),
            tuple(strides),
        ):
            raise RuntimeError(
                f"timm unit {conv} does not match Keras's "
                f"conv2d_bn({filters}, {rows}, {cols}, strides={strides})"
            )
        names = (name, f"{name}_bn", f"{name}_ac") if name else (None, None, None)
        conv_name = names[0] or backend.unique_name("conv2d")
        layer = layers.Conv2D.from_torch(conv, name=conv_name, padding=padding)
        if self._map is not None:  # the first unit takes the model's input
            layer, self._map = _common.map_input(layer, self._map), None
        x = layer(x)
        bn = _common.no_act_bn(unit.bn)
        x = layers.BatchNormalization.from_torch(
            bn, name=names[1] or backend.unique_name("batch_normalization")
        )(x)
        return layers.Activation("relu", name=names[2])(x)


def _avg(x: Any) -> Any:
    pool = layers.AveragePooling2D((3, 3), strides=(1, 1), padding="same")
    pool.count_include_pad = True
    return pool(x)


def _cat(xs: list, name: str | None = None) -> Any:
    return layers.Concatenate(axis=-1, name=name)(xs)


def _build(img: Any, c: _Units) -> Any:
    x = c(img, 32, 3, 3, strides=(2, 2), padding="valid")
    x = c(x, 32, 3, 3, padding="valid")
    x = c(x, 64, 3, 3)
    x = layers.MaxPooling2D((3, 3), strides=(2, 2))(x)
    x = c(x, 80, 1, 1, padding="valid")
    x = c(x, 192, 3, 3, padding="valid")
    x = layers.MaxPooling2D((3, 3), strides=(2, 2))(x)
    for i, pool_filters in enumerate((32, 64, 64)):
        b1 = c(x, 64, 1, 1)
        b5 = c(c(x, 48, 1, 1), 64, 5, 5)
        b3 = c(c(c(x, 64, 1, 1), 96, 3, 3), 96, 3, 3)
        bp = c(_avg(x), pool_filters, 1, 1)
        x = _cat([b1, b5, b3, bp], f"mixed{i}")
    b3 = c(x, 384, 3, 3, strides=(2, 2), padding="valid")
    bd = c(c(c(x, 64, 1, 1), 96, 3, 3), 96, 3, 3, strides=(2, 2), padding="valid")
    bp = layers.MaxPooling2D((3, 3), strides=(2, 2))(x)
    x = _cat([b3, bd, bp], "mixed3")
    for i, f in enumerate((128, 160, 160, 192)):
        b1 = c(x, 192, 1, 1)
        b7 = c(c(c(x, f, 1, 1), f, 1, 7), 192, 7, 1)
        bd = c(c(c(c(c(x, f, 1, 1), f, 7, 1), f, 1, 7), f, 7, 1), 192, 1, 7)
        bp = c(_avg(x), 192, 1, 1)
        x = _cat([b1, b7, bd, bp], f"mixed{4 + i}")
    b3 = c(c(x, 192, 1, 1), 320, 3, 3, strides=(2, 2), padding="valid")
    b7 = c(c(c(c(x, 192, 1, 1), 192, 1, 7), 192, 7, 1), 192, 3, 3, strides=(2, 2), padding="valid")
    bp = layers.MaxPooling2D((3, 3), strides=(2, 2))(x)
    x = _cat([b3, b7, bp], "mixed8")
    for i in range(2):
        b1 = c(x, 320, 1, 1)
        b3 = c(x, 384, 1, 1)
        b3 = _cat([c(b3, 384, 1, 3), c(b3, 384, 3, 1)], f"mixed9_{i}")
        bd = c(c(x, 448, 1, 1), 384, 3, 3)
        bd = _cat([c(bd, 384, 1, 3), c(bd, 384, 3, 1)])
        bp = c(_avg(x), 192, 1, 1)
        x = _cat([b1, b3, bd, bp], f"mixed{9 + i}")
    return x


def build_inception_v3(request: _common.Request) -> Model:
    with _common.keras_graph(request, "inception_v3", 299, 75) as (tm, inputs):
        x = _build(inputs, _Units(tm))
        return _common.keras_model(inputs, x, request, tm.fc, pool_names=(None, None))


InceptionV3 = _common.keras_application(
    build_inception_v3, "InceptionV3", "inception_v3", "inception_v3"
)
preprocess_input = convention("tf", __name__)
