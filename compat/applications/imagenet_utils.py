"""ImageNet preprocessing conventions and ``decode_predictions``.

``preprocess_input`` follows Keras's convention per model (``caffe`` for VGG/ResNet:
RGB->BGR and mean subtraction; ``tf`` for Inception: scale to [-1, 1]; ``torch`` for
DenseNet: ``x/255`` then ImageNet mean/std), so Keras code keeps its numbers. The
applications fold the exact map from their convention to the timm weights' normalisation
into their input, so ``model.predict(preprocess_input(x))`` gives the weights' predictions.

``decode_predictions`` returns Keras's ``(wnid, short_name, score)`` tuples. Keras downloads
its class index (``imagenet_class_index.json``); offline, the same WordNet ids come from
timm's bundled ImageNet info and the short name is the first lemma of each synset with
spaces replaced by underscores (Keras's spelling: ``great_white_shark``, ``crane`` twice).
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
    """Top classes as Keras's ``(wnid, short_name, score)``, best first, for each sample."""
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
    names = [info.label_name_to_description(i).split(",")[0].strip().replace(" ", "_") for i in ids]
    return ids, names


__all__ = ["decode_predictions", "preprocess_input"]
