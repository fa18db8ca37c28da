"""``keras.optimizers`` with Keras's argument names and defaults, backed by ``torch.optim``.

The torch optimizer is created on the first ``fit`` after ``compile`` and kept across
``fit`` calls (Keras keeps its optimizer state too). ``learning_rate`` may be changed any
time (callbacks do); the change reaches the torch optimizer at the next step.
Differences: Keras's ``epsilon`` is added outside the square root in RMSprop like torch's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ftlight.models.optim import build_optimizer


class Optimizer:
    _torch_name = ""
    _unsupported = (
        "clipvalue",
        "global_clipnorm",
        "use_ema",
        "ema_momentum",
        "ema_overwrite_frequency",
        "loss_scale_factor",
        "gradient_accumulation_steps",
    )

    def __init__(
        self,
        learning_rate: float = 0.001,
        weight_decay: float | None = None,
        clipnorm: float | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        if "lr" in kwargs:
            raise ValueError(
                f"Argument(s) not recognized: {{'lr': {kwargs['lr']}}}. Use "
                "`learning_rate` (Keras 3 removed `lr`)."
            )
        for key in list(kwargs):
            if key in self._unsupported and kwargs[key] not in (None, False, 1):
                raise NotImplementedError(f"{type(self).__name__}({key}=...)")
            kwargs.pop(key)
        if not isinstance(learning_rate, (int, float)):
            raise NotImplementedError(
                f"{type(self).__name__}(learning_rate={learning_rate!r}): learning-rate schedule "
                "objects; use callbacks.LearningRateScheduler"
            )
        self._learning_rate = float(learning_rate)
        self.weight_decay = weight_decay
        self.clipnorm = clipnorm
        self.name = name or type(self).__name__.lower()
        self.torch_optimizer: torch.optim.Optimizer | None = None
        self.iterations = 0

    @property
    def learning_rate(self) -> float:
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        self._learning_rate = float(value)
        if self.torch_optimizer is not None:
            for group in self.torch_optimizer.param_groups:
                group["lr"] = self._learning_rate

    lr = learning_rate

    def _torch_kwargs(self) -> dict[str, Any]:
        return {}

    def build(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        groups = [{"params": [p for p in params if p.requires_grad]}]
        kwargs = self._torch_kwargs()
        if self.weight_decay:
            kwargs["weight_decay"] = float(self.weight_decay)
        self.torch_optimizer = build_optimizer(
            self._torch_name, groups, self._learning_rate, **kwargs
        )
        return self.torch_optimizer

    def _slots(self) -> int:
        return 0

    def count_keras_variables(self) -> int:
        """Size of Keras's optimizer variables (iteration, learning_rate, slots per weight)."""
        if self.torch_optimizer is None:
            return 0
        n = sum(p.numel() for g in self.torch_optimizer.param_groups for p in g["params"])
        return 2 + self._slots() * n

    def get_config(self) -> dict[str, Any]:
        cfg = {
            k: v
            for k, v in vars(self).items()
            if not k.startswith("_") and k not in ("torch_optimizer", "iterations")
        }
        cfg["learning_rate"] = self._learning_rate
        return cfg

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Optimizer:
        return cls(**config)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["torch_optimizer"] = None
        return state


class SGD(Optimizer):
    _torch_name = "sgd"

    def __init__(
        self,
        learning_rate: float = 0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)

    def _torch_kwargs(self) -> dict[str, Any]:
        return {"momentum": self.momentum, "nesterov": self.nesterov}

    def _slots(self) -> int:
        return int(self.momentum > 0)


class Adam(Optimizer):
    _torch_name = "adam"

    def __init__(
        self,
        learning_rate: float = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        amsgrad: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.beta_1, self.beta_2, self.epsilon, self.amsgrad = beta_1, beta_2, epsilon, amsgrad

    def _torch_kwargs(self) -> dict[str, Any]:
        return {"betas": (self.beta_1, self.beta_2), "eps": self.epsilon, "amsgrad": self.amsgrad}

    def _slots(self) -> int:
        return 2 + int(self.amsgrad)


class AdamW(Adam):
    _torch_name = "adamw"

    def __init__(
        self, learning_rate: float = 0.001, weight_decay: float = 0.004, **kwargs: Any
    ) -> None:
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, **kwargs)


class RMSprop(Optimizer):
    _torch_name = "rmsprop"

    def __init__(
        self,
        learning_rate: float = 0.001,
        rho: float = 0.9,
        momentum: float = 0.0,
        epsilon: float = 1e-7,
        centered: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.rho, self.momentum, self.epsilon, self.centered = rho, momentum, epsilon, centered

    def _torch_kwargs(self) -> dict[str, Any]:
        return {
            "alpha": self.rho,
            "momentum": self.momentum,
            "eps": self.epsilon,
            "centered": self.centered,
        }

    def _slots(self) -> int:
        return 1 + int(self.momentum > 0) + int(self.centered)


_BY_NAME = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}


def get(identifier: str | Optimizer) -> Optimizer:
    """A string name (``"adam"``, ``"sgd"``, ...) or an instance -> an Optimizer."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    if isinstance(identifier, str):
        raise NotImplementedError(f"Optimizer {identifier!r}. Supported: {sorted(_BY_NAME)}")
    raise ValueError(f"Could not interpret optimizer identifier: {identifier!r}")
