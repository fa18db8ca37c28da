"""Nothing accepted and ignored: every parameter of Keras's public API that compat exports
either exists in compat's signature or makes compat raise an error naming it."""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable, Iterator

import numpy as np
import pytest

MODULES = [
    "",
    "layers",
    "models",
    "optimizers",
    "optimizers.schedules",
    "losses",
    "metrics",
    "callbacks",
    "utils",
    "ops",
    "activations",
    "regularizers",
    "mixed_precision",
    "preprocessing.image",
]
METHODS = (
    "compile",
    "fit",
    "evaluate",
    "predict",
    "summary",
    "save",
    "save_weights",
    "load_weights",
    "get_layer",
    "adapt",
    "flow",
    "flow_from_directory",
    "standardize",
    "apply_transform",
    "get_random_transform",
)
# positional arguments that make a call reach the parameter check
REQUIRED = {
    "Dense": (2,),
    "Conv2D": (2, 3),
    "DepthwiseConv2D": (3,),
    "SeparableConv2D": (2, 3),
    "Reshape": ((4,),),
    "Convolution2D": (2, 3),
    "Dropout": (0.5,),
    "Activation": ("relu",),
    "Resizing": (4, 4),
    "CenterCrop": (4, 4),
    "RandomCrop": (4, 4),
    "RandomRotation": (0.1,),
    "RandomZoom": (0.1,),
    "RandomTranslation": (0.1, 0.1),
    "RandomContrast": (0.1,),
    "RandomBrightness": (0.1,),
    "Rescaling": (1.0,),
    "Input": ((4,),),
    "InputLayer": ((4,),),
    "clone_model": (None,),
    "TensorBoard": (),
    "ExponentialDecay": (0.1, 2, 0.5),
    "InverseTimeDecay": (0.1, 2, 0.5),
    "CosineDecay": (0.1, 2),
    "PolynomialDecay": (0.1, 2),
    "PiecewiseConstantDecay": ([1], [0.1, 0.01]),
}
SENTINEL = "__compat_sentinel__"


def _params(fn: Callable) -> tuple[set[str], bool]:
    sig = inspect.signature(fn)
    names = {
        p.name for p in sig.parameters.values() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }
    return names - {"self"}, any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())


def _forwarded(cls: type) -> set[str]:
    """Parameters a class with ``**kwargs`` hands to its bases (which name them)."""
    names: set[str] = set()
    for base in cls.__mro__[1:]:
        if "__init__" in vars(base):
            base_names, more = _params(base.__init__)
            names |= base_names
            if not more:
                break
    return names


def _pairs(keras, compat) -> Iterator[tuple[str, Callable, Callable, object]]:
    for mod in MODULES:
        k_mod, c_mod = keras, compat
        for part in filter(None, mod.split(".")):
            k_mod, c_mod = getattr(k_mod, part), getattr(c_mod, part)
        for name in getattr(c_mod, "__all__", dir(c_mod)):
            c = getattr(c_mod, name, None)
            k = getattr(k_mod, name, None)
            if name.startswith("_") or c is None or k is None or isinstance(c, types.ModuleType):
                continue
            label = f"keras.{mod + '.' if mod else ''}{name}"
            if inspect.isclass(c) and inspect.isclass(k):
                yield label, k.__init__, c.__init__, c
                for meth in METHODS:
                    if callable(getattr(k, meth, None)) and callable(getattr(c, meth, None)):
                        yield f"{label}.{meth}", getattr(k, meth), getattr(c, meth), None
            elif callable(c) and callable(k) and not inspect.isclass(c):
                yield label, k, c, c


def _missing(keras, compat) -> list[tuple[str, str, object]]:
    out = []
    for label, k_fn, c_fn, target in _pairs(keras, compat):
        try:
            k_names, _ = _params(k_fn)
            c_names, c_more = _params(c_fn)
        except (TypeError, ValueError):
            continue
        if c_more and inspect.isclass(target):
            c_names |= _forwarded(target)
        for name in sorted(k_names - c_names):
            out.append((label, name, target if c_more else None))
    return out


def _small_model(ck):
    model = ck.Sequential([ck.Input((3,)), ck.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def test_keras_parameters_exist_in_compat_or_raise(keras, ck, tmp_path):
    problems = []
    checked = 0
    for label, name, target in _missing(keras, ck):
        if target is None and label.split(".")[-1] not in METHODS:
            continue  # no **kwargs: Python itself rejects the argument by name
        short = label.split(".")[-1]
        try:
            if short in METHODS:
                obj = _small_model(ck)
                method = getattr(obj, short, None)
                if method is None:
                    continue
                _, more = _params(method)
                if not more:
                    continue
                method(str(tmp_path / "m"), **{name: SENTINEL}) if short.startswith(
                    "save"
                ) else method(**{name: SENTINEL})
            else:
                target(*REQUIRED.get(short, ()), **{name: SENTINEL})
        except (NotImplementedError, TypeError, ValueError) as err:
            checked += 1
            if name not in str(err) and not (
                isinstance(err, NotImplementedError) and short in str(err)
            ):
                problems.append(f"{label}({name}=...): error does not name it: {err}")
            continue  # a NotImplementedError naming the whole class also counts
        problems.append(f"{label}({name}=...) was accepted and ignored")
    assert not problems, "\n".join(problems)
    assert checked > 10  # the walk really reached compat's **kwargs paths


def test_named_arguments_raise_instead_of_being_dropped(ck, tmp_path):
    model = _small_model(ck)
    x = np.ones((2, 3), "float32")
    calls = [
        (lambda: model.summary(expand_nested=True), "expand_nested"),
        (lambda: model.summary(layer_range=["dense", "dense"]), "layer_range"),
        (lambda: model.evaluate(x, x[:, :2], callbacks=[ck.callbacks.Callback()]), "callbacks"),
        (lambda: model.predict(x, callbacks=[ck.callbacks.Callback()]), "callbacks"),
        (lambda: model.save(tmp_path / "m", zipped=False), "zipped"),
        (lambda: ck.metrics.AUC(multi_label=True), "multi_label"),
        (lambda: ck.losses.CategoricalCrossentropy(axis=1), "axis"),
    ]
    for call, name in calls:
        with pytest.raises(NotImplementedError, match=name):
            call()
    model.compile(optimizer="sgd", loss="mse", run_eagerly=True)  # compat is always eager
    assert model.fit(x, x[:, :2], verbose=0).history["loss"]
