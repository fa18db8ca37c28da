"""One-file model saving and weights files. The suffix chooses what is written: ``.keras``
(Keras 3's archive), ``.h5``/``.hdf5`` (Keras's legacy HDF5 model; ``.weights.h5`` for
weights) go through :mod:`compat.keras_files` and real Keras reads them; any other suffix
(``.pt``, ``.model``...) is compat's own PyTorch file (the whole compat model and its compile
state and optimizer state, ``torch.save``). Loading goes by the file's bytes, not its name, so
compat files saved under a ``.keras`` name before still load.

Writes are atomic (a failure keeps the previous file). Loading never runs code from the file:
``torch.load(weights_only=True)`` with compat's own layer classes, torch modules and
activation functions allowed (Keras's ``safe_mode``); anything else (a user function, a
class from another package) is refused unless trusted with ``custom_objects``, or the whole
file with ``trust_pickle=True`` (Keras's ``safe_mode=False`` says the same).
"""

from __future__ import annotations

import importlib
import inspect
import os
from typing import Any

import numpy as np
import torch
from torch import nn

from compat.keras_format import NotWritableError, hook
from ftlight.files import UnreadableFileError, _first_line, atomic_path, load_torch_file

FORMAT = "compat-model-v1"
WEIGHTS_FORMAT = "compat-weights-v1"
_MODEL_FILE = "a compat model file (compat's torch file, or Keras's .keras or legacy .h5)"
_WEIGHTS_FILE = "a compat weights file (compat's torch file, or Keras's .weights.h5, .h5 or .keras)"
_KERAS_SUFFIXES = (".keras",)
_H5_SUFFIXES = (".h5", ".hdf5")


def _suffix(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def _warn_torch_file(path: str, err: Exception) -> None:
    import warnings

    warnings.warn(
        f"{path} is written as compat's own torch file, not Keras's format: {err} compat's "
        "load_model/load_weights read it back; real Keras cannot. Name it .pt to say so.",
        UserWarning,
        stacklevel=4,
    )


def _sniff_keras(path: str) -> str | None:
    """``"keras"`` (a .keras archive) or ``"h5"`` (HDF5) when Keras wrote ``path``."""
    from ftlight.files import sniff

    if not os.path.isfile(path):
        return None
    kind = sniff(path)
    if kind.startswith("a Keras 3 .keras archive"):
        return "keras"
    if kind.startswith("an HDF5 file"):
        return "h5"
    return None


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


_MODULE_PACKAGES = ("torch.nn.", "timm.layers.", "timm.models.")


def _rebuilds_as_a_module(cls: type) -> bool:
    """Whether unpickling ``cls`` only sets its state: a ``__setstate__`` of its own may run
    code on the file's values (torch's quantized convolutions prepack them)."""
    from torch.nn.modules.conv import _ConvNd

    return cls.__setstate__ in (nn.Module.__setstate__, _ConvNd.__setstate__)


def _trusted(name: str, custom_objects: dict[str, Any]) -> Any:
    """The object a compat file may name (``module.qualname``), or ``None`` to refuse it.

    Allowed: classes of compat, and modules of torch.nn and timm (the layers compat's
    applications are made of; built, never called with the file's code), and
    compat's activation, loss and metric functions; ``custom_objects`` adds the user's own.
    Only compat, torch and timm modules are ever imported to find out.
    """
    short = name.rpartition(".")[2]
    for key in (name, short):
        if key in custom_objects:
            return custom_objects[key]
    module, _, attr = name.rpartition(".")
    if module.split(".")[0] not in ("compat", "torch", "timm"):
        return None
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None
    if isinstance(obj, type):
        # timm's layers: compat's applications hold timm modules (BatchNormAct2d, ...)
        is_module = (
            issubclass(obj, nn.Module)
            and module.startswith(_MODULE_PACKAGES)
            and obj.__module__.startswith(_MODULE_PACKAGES)  # not an alias (torch.ao's)
            and _rebuilds_as_a_module(obj)
        )
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
    if _suffix(path) in _KERAS_SUFFIXES + _H5_SUFFIXES:
        save = hook("save_keras" if _suffix(path) == ".keras" else "save_legacy_h5")
        try:
            save(model, path)
            return
        except NotWritableError as err:
            _warn_torch_file(path, err)
    config = model._compile_config
    compiled = None if config is None else config.compile_kwargs()
    optimizer = model.__dict__.get("optimizer")  # set by compile() only, as in Keras
    opt_state = None
    if optimizer is not None and optimizer.torch_optimizer is not None:
        opt_state = optimizer.torch_optimizer.state_dict()
    was_training = model.training
    model.eval()
    payload = {"format": FORMAT, "model": model, "compile": compiled, "optimizer_state": opt_state}
    had_optimizer = "optimizer" in model.__dict__
    try:  # the model is pickled without its compile state (saved apart as plain arguments)
        model._compile_config = None
        model.__dict__.pop("optimizer", None)
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    finally:
        model._compile_config = config
        if had_optimizer:
            model.optimizer = optimizer
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
    keras_kind = _sniff_keras(path)
    if keras_kind is not None:
        if custom_objects:
            raise NotImplementedError(
                f"load_model({path!r}, custom_objects=...): compat builds only its own layers "
                "from a Keras file's config, never classes of your own; build the model in "
                "code and call load_weights()."
            )

        load = hook("load_keras" if keras_kind == "keras" else "load_legacy_h5")
        return load(path, compile=compile)
    payload = _load(
        path,
        _MODEL_FILE,
        custom_objects,
        trust_pickle or not safe_mode,
        "custom_objects={name: object} for your own layers and functions, or "
        "trust_pickle=True to load_model (Keras's safe_mode=False) for the whole file",
    )
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UnreadableFileError(f"{path} is a PyTorch file, but not {_MODEL_FILE}.")
    model = payload.get("model")
    if not isinstance(model, model_class):
        raise UnreadableFileError(
            f"{path} is marked {FORMAT} but holds a {type(model).__name__}, not a compat "
            "Model: it was not written by Model.save."
        )
    compiled, opt_state = payload.get("compile"), payload.get("optimizer_state")
    _check_rebuilt_objects(path, [model, compiled, opt_state])
    _check_compile_entry(path, compiled, opt_state)
    if compile and compiled is not None:
        try:
            model.compile(**compiled)
            if opt_state is not None:
                opt = model.optimizer.build(model.parameters())
                opt.load_state_dict(opt_state)
        except Exception as err:  # the file's entries, not the caller, made compile() fail
            raise UnreadableFileError(
                f"{path} could not be read as {_MODEL_FILE}: compiling the model from its "
                f"saved compile() arguments failed ({type(err).__name__}: {_first_line(err)}); "
                "load it with compile=False and call compile() yourself."
            ) from None
    return model


_COMPILE_KEYS = ("optimizer", "loss", "metrics", "cache_features")
_MODULE_STATE = ("_parameters", "_buffers", "_modules", "training")


def _check_compile_entry(path: str, compiled: Any, opt_state: Any) -> None:
    """The ``compile`` entry is what :meth:`CompileConfig.compile_kwargs` writes: names, or
    compat's own optimizer, loss and metric objects (a file never chooses what is called)."""
    from compat import losses, metrics, optimizers

    def refuse(what: str) -> UnreadableFileError:
        return UnreadableFileError(
            f"{path} is not {_MODEL_FILE}: its saved compile() arguments {what} "
            "(Model.save writes names or compat optimizer, loss and metric objects)."
        )

    if opt_state is not None and not isinstance(opt_state, dict):
        raise refuse(f"come with an optimizer state that is a {type(opt_state).__name__}")
    if compiled is None:
        return
    if not isinstance(compiled, dict):
        raise refuse(f"are a {type(compiled).__name__}, not a dict")
    unknown = [k for k in compiled if k not in _COMPILE_KEYS]
    if unknown:
        raise refuse(f"hold {unknown[:3]}, not only {list(_COMPILE_KEYS)}")
    checks = {
        "optimizer": (str, optimizers.Optimizer),
        "loss": (str, losses.Loss, type(None)),
        "cache_features": (bool,),
    }
    for key, types in checks.items():
        value = compiled.get(key)
        if key in compiled and not isinstance(value, types):
            raise refuse(f"hold {key}={type(value).__name__}")
    metric_list = compiled.get("metrics", [])
    if not isinstance(metric_list, list) or not all(
        isinstance(m, (str, metrics.Metric)) for m in metric_list
    ):
        raise refuse("hold metrics that are not a list of names or compat Metric objects")


def _check_rebuilt_objects(path: str, roots: list[Any]) -> None:
    """Refuse objects the file rebuilt with instance attributes that hide their class's methods
    (a ``compile`` or ``forward`` that is a ``torch.nn.Linear``: calling the method would call
    what the file chose) and modules rebuilt without a module's state. Walks the model, its
    modules, and everything else the file's pickle rebuilt that has a ``__dict__``."""
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, (str, bytes, int, float, type)) or obj is None:
            continue
        seen.add(id(obj))
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
            continue
        if isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
            continue
        state = getattr(obj, "__dict__", None)
        if not isinstance(state, dict):
            continue
        cls = type(obj)
        for key in state:
            if not isinstance(key, str) or _hides_a_method(cls, key):
                raise UnreadableFileError(
                    f"{path} is crafted or damaged, not {_MODEL_FILE}: it gives a "
                    f"{cls.__name__} an attribute {key!r} that hides {cls.__name__}.{key} "
                    "(calling it would call what the file chose)."
                )
        if isinstance(obj, nn.Module) and not all(k in state for k in _MODULE_STATE):
            missing = [k for k in _MODULE_STATE if k not in state]
            raise UnreadableFileError(
                f"{path} is crafted or damaged, not {_MODEL_FILE}: it holds a {cls.__name__} "
                f"without a module's state ({', '.join(missing)})."
            )
        stack.extend(state.values())


def _hides_a_method(cls: type, key: str) -> bool:
    """Whether an instance attribute ``key`` would hide a method (or other callable) of
    ``cls``; properties and other data descriptors win over instance attributes anyway."""
    attr = inspect.getattr_static(cls, key, None)
    if isinstance(attr, (staticmethod, classmethod)):
        return True
    return callable(attr)


def save_weights(model: Any, filepath: Any, *, overwrite: bool = True) -> None:
    path = os.fspath(filepath)
    _check_overwrite(path, overwrite)
    if _suffix(path) in _H5_SUFFIXES:
        try:
            hook("save_weights_h5")(model, path)
            return
        except NotWritableError as err:
            _warn_torch_file(path, err)
    entries = [(v.path, torch.from_numpy(np.ascontiguousarray(v.numpy()))) for v in model.weights]
    with atomic_path(path) as tmp:
        torch.save({"format": WEIGHTS_FORMAT, "weights": entries}, tmp)


def load_weights(
    model: Any, filepath: Any, *, skip_mismatch: bool = False, trust_pickle: bool = False
) -> None:
    path = os.fspath(filepath)
    if _sniff_keras(path) is not None:
        hook("load_weights")(model, path, skip_mismatch=skip_mismatch)
        return
    payload = _load(
        path, _WEIGHTS_FILE, None, trust_pickle, "trust_pickle=True to compat.saving.load_weights"
    )
    if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT:
        raise UnreadableFileError(f"{path} is a PyTorch file, but not {_WEIGHTS_FILE}.")
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
