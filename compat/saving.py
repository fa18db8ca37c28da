"""One-file model saving (a PyTorch file, NOT TensorFlow's SavedModel/HDF5/``.keras``) and
weights files (Keras order and shapes, stored as tensors with ``torch.save``).

Writes are atomic (a failure keeps the previous file). Loading never runs code from the file:
``torch.load(weights_only=True)`` with compat's own layer classes, torch modules and
activation functions allowed (Keras's ``safe_mode``); anything else (a user function, a
class from another package) is refused unless trusted with ``custom_objects``, or the whole
file with ``trust_pickle=True`` (Keras's ``safe_mode=False`` says the same).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import numpy as np
import torch
from torch import nn

from ftlight.files import atomic_path, load_torch_file

FORMAT = "compat-model-v1"
WEIGHTS_FORMAT = "compat-weights-v1"
_MODEL_FILE = (
    "a compat model file (written by compat's Model.save; compat cannot read Keras's own "
    ".keras, .h5 or SavedModel formats)"
)
_WEIGHTS_FILE = (
    "a compat weights file (written by compat's Model.save_weights; compat cannot read "
    "Keras's .weights.h5 files)"
)
_FUNCTION_MODULES = ("compat.activations", "compat.losses", "compat.metrics")
# NumPy arrays and scalars as pickled by older weights files and layer attributes.
_NUMPY = [
    np.zeros(1).__reduce__()[0],
    np.float64(0).__reduce__()[0],
    np.ndarray,
    np.dtype,
    *{type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"},
]


def _check_overwrite(path: str, overwrite: bool) -> None:
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{path} exists and overwrite=False.")


def _trusted(name: str, custom_objects: dict[str, Any]) -> Any:
    """The object a compat file may name (``module.qualname``), or ``None`` to refuse it.

    Allowed: classes of compat and torch.nn (built, never called with the file's code), and
    compat's activation, loss and metric functions; ``custom_objects`` adds the user's own.
    Only compat and torch modules are ever imported to find out.
    """
    short = name.rpartition(".")[2]
    for key in (name, short):
        if key in custom_objects:
            return custom_objects[key]
    module, _, attr = name.rpartition(".")
    if module.split(".")[0] not in ("compat", "torch"):
        return None
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None
    if isinstance(obj, type):
        is_module = issubclass(obj, nn.Module) and module.startswith("torch.nn.")
        return obj if module.startswith("compat.") or is_module else None
    from compat.activations import _ACTIVATIONS

    if module in _FUNCTION_MODULES or any(obj is f for f in _ACTIVATIONS.values()):
        return obj if callable(obj) else None
    return None


def _load(path: str, what: str, custom_objects: Any, trust_pickle: bool, opt_in: str) -> Any:
    custom = dict(custom_objects or {})
    with torch.serialization.safe_globals(_NUMPY):
        return load_torch_file(
            path,
            what=what,
            trust_pickle=trust_pickle,
            allow=lambda name: _trusted(name, custom),
            opt_in=opt_in,
        )


def save_model(model: Any, filepath: Any, *, overwrite: bool = True) -> None:
    """Called by ``Model.save`` (so ``model`` is a compat Model; no import of models)."""
    path = os.fspath(filepath)
    _check_overwrite(path, overwrite)
    config = model._compile_config
    compiled = None if config is None else config.compile_kwargs()
    opt_state = None
    if model.optimizer is not None and model.optimizer.torch_optimizer is not None:
        opt_state = model.optimizer.torch_optimizer.state_dict()
    was_training = model.training
    model.eval()
    payload = {"format": FORMAT, "model": model, "compile": compiled, "optimizer_state": opt_state}
    saved = model._compile_config, model.optimizer
    try:
        model._compile_config, model.optimizer = None, None
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    finally:
        model._compile_config, model.optimizer = saved
        model.train(was_training)


def load_model(
    filepath: Any,
    *,
    model_class: type,
    compile: bool = True,
    custom_objects: Any = None,
    safe_mode: bool = True,
    trust_pickle: bool = False,
) -> Any:
    """A model written by :func:`save_model`; nothing in the file runs unless trusted.

    ``custom_objects`` (name -> class or function) trusts the user's own layers and
    functions; ``trust_pickle=True`` (or ``safe_mode=False``) unpickles anything.
    ``model_class`` is compat's ``Model``, passed in because compat.models imports this module.
    """
    path = os.fspath(filepath)
    payload = _load(
        path,
        _MODEL_FILE,
        custom_objects,
        trust_pickle or not safe_mode,
        "custom_objects={name: object} for your own layers and functions, or "
        "trust_pickle=True to load_model (Keras's safe_mode=False) for the whole file",
    )
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is a PyTorch file, but not {_MODEL_FILE}.")
    model = payload.get("model")
    if not isinstance(model, model_class):
        raise ValueError(
            f"{path} is marked {FORMAT} but holds a {type(model).__name__}, not a compat "
            "Model: it was not written by Model.save."
        )
    if compile and payload["compile"] is not None:
        model.compile(**payload["compile"])
        if payload["optimizer_state"] is not None:
            opt = model.optimizer.build(model.parameters())
            opt.load_state_dict(payload["optimizer_state"])
    return model


def save_weights(model: Any, filepath: Any, *, overwrite: bool = True) -> None:
    path = os.fspath(filepath)
    _check_overwrite(path, overwrite)
    entries = [(v.path, torch.from_numpy(np.ascontiguousarray(v.numpy()))) for v in model.weights]
    with atomic_path(path) as tmp:
        torch.save({"format": WEIGHTS_FORMAT, "weights": entries}, tmp)


def load_weights(
    model: Any, filepath: Any, *, skip_mismatch: bool = False, trust_pickle: bool = False
) -> None:
    path = os.fspath(filepath)
    payload = _load(
        path, _WEIGHTS_FILE, None, trust_pickle, "trust_pickle=True to compat.saving.load_weights"
    )
    if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{path} is a PyTorch file, but not {_WEIGHTS_FILE}.")
    entries = payload["weights"]
    own = model.weights
    if len(entries) != len(own) and not skip_mismatch:
        raise ValueError(
            f"Weights file {path} holds {len(entries)} variables; model "
            f"'{model.name}' has {len(own)}."
        )
    for var, (name, value) in zip(own, entries, strict=False):
        value = value.numpy() if torch.is_tensor(value) else value
        if tuple(np.shape(value)) != var.shape:
            if skip_mismatch:
                continue
            raise ValueError(
                f"Shape mismatch for {var.path}: file has {name} with shape "
                f"{np.shape(value)}, model expects {var.shape}."
            )
        var.assign(value)
