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

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from compat.graph import KerasTensor

# Keras's constants, as Python floats (Keras subtracts them in the array's own dtype)
_CAFFE_MEAN_BGR = [103.939, 116.779, 123.68]
_TORCH_MEAN = [0.485, 0.456, 0.406]
_TORCH_STD = [0.229, 0.224, 0.225]


# What ``preprocess_input`` returns: the input's kind (a NumPy array, a torch tensor, or a node of
# the functional graph for a symbolic input); ``decode_predictions``: per sample, the top
# ``(wnid, short_name, score)``.
Preprocessed = np.ndarray | torch.Tensor | KerasTensor
Decoded = list[list[tuple[str, str, float]]]


def preprocess_input(x: Any, data_format: str | None = None, mode: str = "caffe") -> Preprocessed:
    """Keras's ``preprocess_input``, on NumPy arrays, torch tensors and symbolic tensors.

    As in Keras, a floating NumPy array or torch tensor is written over where the dtypes
    allow (``np.copy(x)`` avoids it) and keeps its float dtype; other arrays become float32.
    On a symbolic ``KerasTensor`` (``keras.Input``) the preprocessing becomes one node of the
    functional graph. Known difference: an integer *symbolic* input is cast to float32 first
    (Keras's own graph subtracts the caffe mean in the integer dtype and wraps around).
    """
    if mode not in {"caffe", "tf", "torch"}:
        raise ValueError(
            f"Expected mode to be one of `caffe`, `tf` or `torch`. Received: mode={mode}"
        )
    if data_format not in (None, "channels_first", "channels_last"):
        raise ValueError(
            "Expected data_format to be one of `channels_first` or `channels_last`. "
            f"Received: data_format={data_format}"
        )
    if data_format == "channels_first":
        raise NotImplementedError("preprocess_input(data_format='channels_first')")
    if isinstance(x, KerasTensor):
        from compat.ops import _apply

        def symbolic(t: torch.Tensor) -> torch.Tensor:
            t = t.clone() if t.is_floating_point() else t.float()
            return _preprocess_tensor(t, mode)

        return _apply("preprocess_input", symbolic, x)
    if isinstance(x, torch.Tensor):
        return _preprocess_tensor(x, mode)
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    return _preprocess_numpy(x, mode)


def _preprocess_numpy(x: np.ndarray, mode: str) -> np.ndarray:
    """Keras's ``_preprocess_numpy_input`` for channels-last arrays (in place where it can)."""
    if not issubclass(x.dtype.type, np.floating):
        x = x.astype("float32", copy=False)
    if mode == "tf":
        x /= 127.5
        x -= 1.0
        return x
    if mode == "torch":
        x /= 255.0
        mean, std = _TORCH_MEAN, _TORCH_STD
    else:
        x = x[..., ::-1]
        mean, std = _CAFFE_MEAN_BGR, None
    for c in range(3):
        x[..., c] -= mean[c]
        if std is not None:
            x[..., c] /= std[c]
    return x


def _preprocess_tensor(x: torch.Tensor, mode: str) -> torch.Tensor:
    """Keras's ``_preprocess_tensor_input`` on a channels-last torch tensor (in place where
    it can, like Keras's torch backend)."""
    if mode == "tf":
        x /= 127.5
        x -= 1.0
        return x
    if mode == "torch":
        x /= 255.0
        mean, std = _TORCH_MEAN, _TORCH_STD
    else:
        x = torch.stack([x[..., i] for i in (2, 1, 0)], dim=-1)
        mean, std = _CAFFE_MEAN_BGR, None
    shape = (1,) * (x.ndim - 1) + (3,)
    x += torch.as_tensor(-np.array(mean), dtype=x.dtype, device=x.device).reshape(shape)
    if std is not None:
        x /= torch.as_tensor(np.array(std), dtype=x.dtype, device=x.device)
    return x


_CONVENTIONS = {
    "caffe": "Keras's ``caffe`` convention (RGB->BGR, ImageNet mean subtracted, no scaling).",
    "tf": "Keras's ``tf`` convention: scale pixels to [-1, 1].",
    "torch": "Keras's ``torch`` convention: ``x / 255`` then ImageNet mean/std.",
}


def convention(mode: str | None, module: str) -> Callable[..., Preprocessed]:
    """An application module's ``preprocess_input``: Keras's ``mode`` convention, or, for
    ``None``, Keras's pass-through (the model itself rescales its [0, 255] input)."""

    def preprocess(x: Any, data_format: str | None = None) -> Preprocessed:
        if mode is None:
            if data_format not in (None, "channels_last"):
                raise NotImplementedError(f"preprocess_input(data_format={data_format!r})")
            return x
        return preprocess_input(x, data_format=data_format, mode=mode)

    preprocess.__name__ = preprocess.__qualname__ = "preprocess_input"
    preprocess.__module__ = module
    preprocess.__doc__ = _CONVENTIONS.get(
        mode, "A pass-through, as Keras's: the model rescales its [0, 255] input itself."
    )
    return preprocess


def decode_predictions(preds: Any, top: int = 5) -> Decoded:
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
