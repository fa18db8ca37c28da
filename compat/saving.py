"""One-file model saving (a PyTorch pickle, NOT TensorFlow's SavedModel/HDF5/``.keras``)
and weights files (Keras order and shapes, stored with ``torch.save``)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

FORMAT = "compat-model-v1"
WEIGHTS_FORMAT = "compat-weights-v1"


def _check_overwrite(path: str, overwrite: bool) -> None:
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{path} exists and overwrite=False.")


def save_model(model: Any, filepath: Any, *, overwrite: bool = True) -> None:
    """Called by ``Model.save`` (so ``model`` is a compat Model; no import of models)."""
    path = os.fspath(filepath)
    _check_overwrite(path, overwrite)
    compiled = None
    if model._compiled is not None:
        keys = ("optimizer", "loss", "metrics", "cache_features")
        compiled = {k: model._compiled[k] for k in keys if k in model._compiled}
    opt_state = None
    if model.optimizer is not None and model.optimizer.torch_optimizer is not None:
        opt_state = model.optimizer.torch_optimizer.state_dict()
    was_training = model.training
    model.eval()
    payload = {"format": FORMAT, "model": model, "compile": compiled, "optimizer_state": opt_state}
    saved = model._compiled, model.optimizer
    try:
        model._compiled, model.optimizer = None, None
        torch.save(payload, path)
    finally:
        model._compiled, model.optimizer = saved
        model.train(was_training)


def load_model(filepath: Any, *, compile: bool = True) -> Any:
    path = os.fspath(filepath)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No file or directory found at {path}")
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a compat model file (expected format {FORMAT!r}). TensorFlow "
            "SavedModel, HDF5 and .keras files cannot be loaded by compat."
        )
    model = payload["model"]
    if compile and payload["compile"] is not None:
        model.compile(**payload["compile"])
        if payload["optimizer_state"] is not None:
            opt = model.optimizer.build(model.parameters())
            opt.load_state_dict(payload["optimizer_state"])
    return model


def save_weights(model: Any, filepath: Any, *, overwrite: bool = True) -> None:
    path = os.fspath(filepath)
    _check_overwrite(path, overwrite)
    entries = [(v.path, v.numpy()) for v in model.weights]
    torch.save({"format": WEIGHTS_FORMAT, "weights": entries}, path)


def load_weights(model: Any, filepath: Any, *, skip_mismatch: bool = False) -> None:
    path = os.fspath(filepath)
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{path} is not a compat weights file (format {WEIGHTS_FORMAT!r}).")
    entries = payload["weights"]
    own = model.weights
    if len(entries) != len(own) and not skip_mismatch:
        raise ValueError(
            f"Weights file {path} holds {len(entries)} variables; model "
            f"'{model.name}' has {len(own)}."
        )
    for var, (name, value) in zip(own, entries, strict=False):
        if tuple(np.shape(value)) != var.shape:
            if skip_mismatch:
                continue
            raise ValueError(
                f"Shape mismatch for {var.path}: file has {name} with shape "
                f"{np.shape(value)}, model expects {var.shape}."
            )
        var.assign(value)
