"""The new classification head: hidden Dense layers with activation, dropout and batch norm;
and :func:`fit_linear_probe`, which fits a linear head on backbone features in one go."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

# L2 strength of the linear probe (on the summed squared weights), measured on digits with
# EfficientNet-Lite0 features at 96 px: 1e-4 / 1e-3 / 1e-2 gave 0.963 / 0.959 / 0.954
# held-out, and 1e-3 converges in a tenth of 1e-4's time (benchmarks/README.md).
PROBE_L2 = 1e-3
PROBE_MAX_ITER = 100
# head_init="auto" probes up to this many rows x features x outputs: 2**31 is ~3e12 flops
# for the fit's ~250 passes (tens of seconds on 2 CPU cores); digits: 1,007 x 1,280 x 10.
PROBE_AUTO_BUDGET = 2**31

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


def linear_head(head: nn.Module) -> nn.Linear:
    """The head's only parametrised layer if it is one ``Linear`` (dropout allowed), else a
    ``ValueError`` saying what the head holds."""
    layers = [m for m in head.modules() if next(m.parameters(recurse=False), None) is not None]
    if len(layers) != 1 or not isinstance(layers[0], nn.Linear):
        raise ValueError(
            "head_init='probe' fits a linear head (no hidden layers, no head BatchNorm: "
            "hidden=(), head_batchnorm=False; on the command line --model.hidden '[]'). "
            f"Received a head with parametrised layers {[type(m).__name__ for m in layers]}."
        )
    return layers[0]


@torch.no_grad()
def fit_linear_probe(
    linear: nn.Linear,
    features: torch.Tensor,
    targets: torch.Tensor,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    l2: float = PROBE_L2,
    max_iter: int = PROBE_MAX_ITER,
) -> float:
    """Set ``linear`` to the minimiser of ``loss(linear(features), targets) + l2/2 |W|^2``
    (full batch, L-BFGS from zero weights; the linear probe of LP-FT, Kumar et al. 2022), in
    float32 on the layer's device; returns the final loss. Raises ``FloatingPointError`` and
    leaves ``linear`` as it was when the fit is not finite."""
    weight = torch.zeros_like(linear.weight, dtype=torch.float32, requires_grad=True)
    bias = None if linear.bias is None else torch.zeros_like(linear.bias, dtype=torch.float32)
    params = [weight] if bias is None else [weight, bias.requires_grad_()]
    x = features.to(weight.device, torch.float32)
    y = targets.to(weight.device)
    bad = int((~torch.isfinite(x)).sum())
    if bad:  # L-BFGS's line search would fail on a NaN step with torch's overflow message
        raise FloatingPointError(
            f"The linear probe needs finite features: {bad} of the {x.numel()} feature "
            f"values are not finite (features of shape {tuple(x.shape)})."
        )
    optimizer = torch.optim.LBFGS(
        params, lr=1.0, max_iter=max_iter, history_size=10, line_search_fn="strong_wolfe"
    )

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        logits = nn.functional.linear(x, weight, bias)
        value = loss(logits, y) + 0.5 * l2 * weight.pow(2).sum()
        value.backward()
        return value

    with torch.enable_grad():
        optimizer.step(objective)
        final = float(objective().detach())
    finite = torch.isfinite(weight).all() and (bias is None or torch.isfinite(bias).all())
    if not (finite and math.isfinite(final)):
        raise FloatingPointError(f"The linear probe did not converge (loss {final}).")
    linear.weight.copy_(weight)
    if bias is not None:
        linear.bias.copy_(bias)
    return final
