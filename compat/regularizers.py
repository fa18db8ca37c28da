"""Weight regularizers (``keras.regularizers``)."""

from __future__ import annotations

import torch


class Regularizer:
    def __call__(self, w: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def get_config(self) -> dict:
        return dict(vars(self))


class L1L2(Regularizer):
    """``l1 * sum(|w|) + l2 * sum(w**2)``, added to the training loss like Keras."""

    def __init__(self, l1: float = 0.0, l2: float = 0.0) -> None:
        self.l1 = float(l1)
        self.l2 = float(l2)

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        out = w.new_zeros(())
        if self.l1:
            out = out + self.l1 * w.abs().sum()
        if self.l2:
            out = out + self.l2 * w.square().sum()
        return out


class L2(L1L2):
    def __init__(self, l2: float = 0.01) -> None:
        super().__init__(l2=l2)


class L1(L1L2):
    def __init__(self, l1: float = 0.01) -> None:
        super().__init__(l1=l1)


def l2(l2: float = 0.01) -> L2:
    return L2(l2)


def l1(l1: float = 0.01) -> L1:
    return L1(l1)


def l1_l2(l1: float = 0.01, l2: float = 0.01) -> L1L2:
    return L1L2(l1, l2)


def get(identifier: Regularizer | str | None) -> Regularizer | None:
    if identifier is None or isinstance(identifier, Regularizer):
        return identifier
    if identifier in ("l2", "L2"):
        return L2()
    if identifier in ("l1", "L1"):
        return L1()
    raise ValueError(
        f"Unknown regularizer. Received: {identifier!r}. Expected 'l1', 'l2' or a "
        "compat.regularizers.Regularizer."
    )
