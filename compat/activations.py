"""Activation functions by Keras name, acting on internal-layout tensors."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def _softmax(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x, dim=1 if x.ndim == 4 else -1)


def _linear(x: torch.Tensor) -> torch.Tensor:
    return x


def _sigmoid(x: torch.Tensor) -> torch.Tensor:
    # a module-level function (not ``torch.sigmoid`` itself): a builtin pickles as a call of
    # ``getattr`` on torch's C class, which safe loading rightly refuses, so saved models with
    # sigmoid or tanh layers could not be loaded back
    return torch.sigmoid(x)


def _tanh(x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x)


def _hard_swish(x: torch.Tensor) -> torch.Tensor:
    return F.hardswish(x)


def _leaky_relu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "linear": _linear,
    "relu": F.relu,
    "relu6": F.relu6,
    "sigmoid": _sigmoid,
    "softmax": _softmax,
    "tanh": _tanh,
    "elu": F.elu,
    "selu": F.selu,
    "gelu": F.gelu,
    "silu": F.silu,
    "swish": F.silu,
    "softplus": F.softplus,
    "softsign": F.softsign,
    "leaky_relu": _leaky_relu,
    "hard_sigmoid": F.hardsigmoid,
    "hard_swish": _hard_swish,
    "hard_silu": _hard_swish,
    "mish": F.mish,
}


# Keras's own names for the aliases (``keras.activations.serialize`` writes these)
_CANONICAL = {"swish": "silu", "hard_swish": "hard_silu"}


def keras_name(activation: str | Callable | None) -> str:
    """The name Keras's ``keras.activations.serialize`` gives: ``"swish"`` is ``"silu"``,
    ``"hard_swish"`` is ``"hard_silu"``; ``None`` is ``"linear"``."""
    if activation is None:
        return "linear"
    if isinstance(activation, str) and activation in _ACTIVATIONS:
        return _CANONICAL.get(activation, activation)
    for name, fn in _ACTIVATIONS.items():
        if activation is fn:
            return _CANONICAL.get(name, name)
    raise ValueError(
        f"Activation {activation!r} has no Keras name; compat names {sorted(_ACTIVATIONS)}."
    )


def get(identifier: str | Callable | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``None``/name/callable -> callable (a callable receives internal-layout tensors)."""
    if identifier is None:
        return _linear
    if callable(identifier):
        return identifier
    if isinstance(identifier, str) and identifier in _ACTIVATIONS:
        return _ACTIVATIONS[identifier]
    raise ValueError(
        f"Unknown activation. Received: activation={identifier!r}. Expected one of "
        f"{sorted(_ACTIVATIONS)} or a callable."
    )


def serialize(identifier: str | Callable | None) -> str | Callable | None:
    """Keras's name of a known activation (aliases canonical, as Keras's ``serialize``); a
    function of your own (or ``None``) is returned as it is."""
    if identifier is None:
        return None
    try:
        return keras_name(identifier)
    except ValueError:
        return identifier
