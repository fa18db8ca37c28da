"""The new classification head: hidden Dense layers with activation, dropout and batch norm."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
}


def build_head(
    in_features: int,
    num_outputs: int,
    *,
    hidden: Sequence[int] = (),
    activation: str = "relu",
    dropout: float = 0.0,
    batchnorm: bool = False,
) -> nn.Sequential:
    """``[Dropout] -> (Linear -> [BatchNorm1d] -> act -> [Dropout])* -> Linear(num_outputs)``.

    The width of the first layer comes from the backbone (``in_features``), never hard-coded.
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(
            f"Unknown head activation {activation!r}. Expected one of {sorted(_ACTIVATIONS)}."
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1). Received: {dropout}")
    if num_outputs < 1:
        raise ValueError(f"The head needs at least one output. Received: {num_outputs}")
    layers: list[nn.Module] = []
    width = in_features
    for size in hidden:
        layers.append(nn.Linear(width, int(size)))
        if batchnorm:
            layers.append(nn.BatchNorm1d(int(size)))
        layers.append(_ACTIVATIONS[activation]())
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = int(size)
    if dropout and not hidden:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(width, num_outputs))
    return nn.Sequential(*layers)
