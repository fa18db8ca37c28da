"""ImageNet preprocessing conventions and ``decode_predictions``.

``preprocess_input`` follows Keras's convention per model (``caffe`` for VGG16/ResNet50:
RGB->BGR and mean subtraction; ``tf`` for InceptionV3: scale to [-1, 1]) so that Keras code
keeps its numbers. The ftlight engine's pre-trained timm weights expect ``torch``-style
normalisation (``x/255`` then ImageNet mean/std, see ``Backbone.data_config``); use
``preprocess_input(x, mode="torch")`` with pre-trained weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype="float32")
_TORCH_MEAN = np.array([0.485, 0.456, 0.406], dtype="float32")
_TORCH_STD = np.array([0.229, 0.224, 0.225], dtype="float32")


def preprocess_input(x: Any, data_format: str | None = None, mode: str = "caffe") -> np.ndarray:
    if data_format not in (None, "channels_last"):
        raise NotImplementedError(f"preprocess_input(data_format={data_format!r})")
    x = np.asarray(x, dtype="float32").copy()
    if x.shape[-1] != 3:
        raise ValueError(
            f"preprocess_input expects channels-last RGB images (..., 3). Received: shape={x.shape}"
        )
    if mode == "caffe":
        return x[..., ::-1] - _MEAN_BGR
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "torch":
        return (x / 255.0 - _TORCH_MEAN) / _TORCH_STD
    raise ValueError(f"mode must be 'caffe', 'tf' or 'torch'. Received: mode={mode!r}")


def decode_predictions(preds: Any, top: int = 5) -> list[list[tuple[str, str, float]]]:
    """Top classes as ``(class_id, name, score)``; names from timm's ImageNet info."""
    preds = np.asarray(preds)
    if preds.ndim != 2 or preds.shape[1] != 1000:
        raise ValueError(
            "`decode_predictions` expects a batch of predictions (i.e. a 2D array of shape "
            f"(samples, 1000)). Received array with shape: {preds.shape}"
        )
    ids, names = _imagenet_classes()
    out = []
    for row in preds:
        idx = row.argsort()[-top:][::-1]
        out.append([(ids[i], names[i], float(row[i])) for i in idx])
    return out


def _imagenet_classes() -> tuple[list[str], list[str]]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    ids = [info.index_to_label_name(i) for i in range(1000)]
    names = [info.index_to_description(i) for i in range(1000)]
    return ids, names


__all__ = ["decode_predictions", "preprocess_input"]
