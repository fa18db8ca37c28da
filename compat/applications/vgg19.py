"""VGG19 (``keras.applications.vgg19``) on timm's ``vgg19``; see :mod:`compat.applications._vgg`."""

from __future__ import annotations

from typing import Any

from compat.applications._vgg import build_vgg
from compat.applications.imagenet_utils import Decoded, Preprocessed
from compat.applications.imagenet_utils import decode_predictions as _decode
from compat.applications.imagenet_utils import preprocess_input as _preprocess
from compat.models import Model


def VGG19(
    include_top: bool = True,
    weights: Any = "imagenet",
    input_tensor: Any = None,
    input_shape: Any = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: Any = "softmax",
    name: str = "vgg19",
) -> Model:
    return build_vgg(
        "vgg19",
        (2, 2, 4, 4, 4),
        include_top=include_top,
        weights=weights,
        input_tensor=input_tensor,
        input_shape=input_shape,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        name=name,
    )


def preprocess_input(x: Any, data_format: str | None = None) -> Preprocessed:
    """Keras's ``caffe`` convention (RGB->BGR, ImageNet mean subtracted, no scaling)."""
    return _preprocess(x, data_format=data_format, mode="caffe")


def decode_predictions(preds: Any, top: int = 5) -> Decoded:
    """Keras's ``decode_predictions``: per sample, the top ``(wnid, short_name, score)``."""
    return _decode(preds, top=top)
