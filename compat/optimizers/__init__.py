"""``keras.optimizers``: Keras's update rules, defaults and variables on torch parameters.

Each optimizer applies Keras's own update (ported from ``keras/src/backend/torch/optimizers``:
the same formulas, epsilon placement, decoupled ``weight_decay`` and per-variable
``clipnorm``), so weights after ``fit`` equal Keras's. torch's built-in optimizers differ in
small ways that add up (Adam's epsilon is scaled differently, RMSprop puts it outside the
square root, ``weight_decay`` is an L2 term, Adagrad starts its accumulator at 0).

The torch optimizer (:class:`KerasUpdate`) is created at the first ``fit`` after
``compile`` and kept across ``fit`` calls, like Keras's optimizer state. ``learning_rate``
is a variable (``numpy()``, ``assign()``) or a :mod:`~compat.optimizers.schedules`
schedule evaluated at ``iterations``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from compat.optimizers import schedules
from compat.optimizers.schedules import LearningRateSchedule

f32 = np.float32


def _binary(op: str) -> Callable[..., Any]:
    def method(self: ScalarVariable, other: Any) -> Any:
        return getattr(self._value, op)(np.asarray(other))

    return method


class ScalarVariable:
    """A scalar Keras variable (``optimizer.learning_rate``, ``optimizer.iterations``)."""

    def __init__(self, value: Any, dtype: str, name: str) -> None:
        self.dtype, self.name = dtype, name
        self._value = np.array(value, dtype=dtype)

    def numpy(self) -> np.ndarray:
        return self._value.copy()

    @property
    def value(self) -> np.ndarray:
        return self.numpy()

    def assign(self, value: Any) -> None:
        self._value = np.array(np.asarray(value), dtype=self.dtype)

    def assign_add(self, value: Any) -> None:
        self.assign(self._value + value)

    def __float__(self) -> float:
        return float(self._value)

    def __int__(self) -> int:
        return int(self._value)

    def __index__(self) -> int:
        return int(self._value)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self._value.astype(dtype) if dtype is not None else self.numpy()

    def __repr__(self) -> str:
        return f"<Variable path={self.name}, shape=(), dtype={self.dtype}, value={self._value}>"

    def __eq__(self, other: Any) -> Any:
        return self._value == np.asarray(other)

    def __hash__(self) -> int:
        return id(self)

    __add__, __radd__ = _binary("__add__"), _binary("__radd__")
    __sub__, __rsub__ = _binary("__sub__"), _binary("__rsub__")
    __mul__, __rmul__ = _binary("__mul__"), _binary("__rmul__")
    __truediv__, __rtruediv__ = _binary("__truediv__"), _binary("__rtruediv__")
    __lt__, __le__ = _binary("__lt__"), _binary("__le__")
    __gt__, __ge__ = _binary("__gt__"), _binary("__ge__")
    __pow__ = _binary("__pow__")


class KerasUpdate(torch.optim.Optimizer):
    """The torch optimizer Lightning steps: applies the owning Keras optimizer's rule to the
    parameters that received a gradient (frozen ones get none)."""

    def __init__(self, params: list[torch.nn.Parameter], owner: Optimizer) -> None:
        super().__init__(params, {"lr": float(owner.learning_rate)})
        self.owner = owner

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        if params:
            self.owner._apply(self, params, [p.grad for p in params])
        return loss


class Optimizer:
    """Base class: Keras's arguments, learning-rate variable, clipping and weight decay."""

    _slot_names: tuple[str, ...] = ()

    def __init__(
        self,
        learning_rate: Any = 0.001,
        weight_decay: float | None = None,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
        global_clipnorm: float | None = None,
        use_ema: bool = False,
        ema_momentum: float = 0.99,
        ema_overwrite_frequency: int | None = None,
        loss_scale_factor: float | None = None,
        gradient_accumulation_steps: int | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        if "lr" in kwargs:
            raise ValueError(
                f"Argument(s) not recognized: {{'lr': {kwargs['lr']}}}. Use "
                "`learning_rate` (Keras 3 removed `lr`)."
            )
        if kwargs.pop("decay", None) is not None:
            warnings.warn(
                "Argument `decay` is no longer supported and will be ignored.", stacklevel=2
            )
        if kwargs:
            raise ValueError(f"Argument(s) not recognized: {kwargs}")
        for arg, value, default in (
            ("use_ema", use_ema, False),
            ("ema_overwrite_frequency", ema_overwrite_frequency, None),
            ("loss_scale_factor", loss_scale_factor, None),
            ("gradient_accumulation_steps", gradient_accumulation_steps, None),
        ):
            if value != default:
                raise NotImplementedError(f"{type(self).__name__}({arg}={value!r})")
        clips = sum(a is not None for a in (clipnorm, clipvalue, global_clipnorm))
        if clips > 1:
            raise ValueError(
                "Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set. "
                f"Received: clipnorm={clipnorm}, clipvalue={clipvalue}, "
                f"global_clipnorm={global_clipnorm}"
            )
        self.name = name or type(self).__name__.lower()
        self.weight_decay = weight_decay
        self.clipnorm, self.clipvalue, self.global_clipnorm = clipnorm, clipvalue, global_clipnorm
        self.use_ema, self.ema_momentum = use_ema, ema_momentum
        self.ema_overwrite_frequency = ema_overwrite_frequency
        self.loss_scale_factor = loss_scale_factor
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self._learning_rate: Any = None
        self.learning_rate = learning_rate
        self.iterations = ScalarVariable(0, "int64", f"{self.name}/iteration")
        self.torch_optimizer: KerasUpdate | None = None
        self._exclude_ids: set[int] = set()
        self._exclude_pattern: re.Pattern | None = None
        self._variable_names: dict[int, str] = {}

    # ----- learning rate ------------------------------------------------------------
    @property
    def learning_rate(self) -> Any:
        """A variable, or the schedule's value at ``iterations`` (as in Keras)."""
        return self._current_learning_rate()

    @learning_rate.setter
    def learning_rate(self, value: Any) -> None:
        if isinstance(value, LearningRateSchedule) or (
            callable(value) and not isinstance(value, ScalarVariable)
        ):
            self._learning_rate = value
            return
        if isinstance(self._learning_rate, LearningRateSchedule):
            raise TypeError(
                "This optimizer was created with a `LearningRateSchedule` object as its "
                "`learning_rate` constructor argument, hence its learning rate is not "
                "settable. If you need the learning rate to be settable, you should "
                "instantiate the optimizer with a float `learning_rate` argument."
            )
        if not isinstance(self._learning_rate, ScalarVariable):
            self._learning_rate = ScalarVariable(value, "float32", f"{self.name}/learning_rate")
        else:
            self._learning_rate.assign(value)

    def _current_learning_rate(self) -> Any:
        if isinstance(self._learning_rate, LearningRateSchedule):
            return f32(self._learning_rate(int(self.iterations)))
        if isinstance(self._learning_rate, ScalarVariable):
            return self._learning_rate
        return f32(self._learning_rate())

    # ----- building and applying ----------------------------------------------------
    def build(self, params: Iterable[torch.nn.Parameter]) -> KerasUpdate:
        """The torch optimizer over ``params`` that need gradients (Keras builds on the
        trainable variables at the first ``fit``)."""
        self.torch_optimizer = KerasUpdate([p for p in params if p.requires_grad], self)
        return self.torch_optimizer

    def exclude_from_weight_decay(
        self, var_list: list[Any] | None = None, var_names: list[str] | None = None
    ) -> None:
        """Keep ``var_list`` variables, and variables whose name contains one of
        ``var_names``, out of weight decay (call before the first ``fit``, as in Keras)."""
        if self.torch_optimizer is not None:
            raise ValueError(
                "`exclude_from_weight_decay()` can only be configured before the optimizer "
                "is built."
            )
        self._exclude_ids = {id(v.value) for v in var_list or []}
        self._exclude_pattern = re.compile("|".join(set(var_names))) if var_names else None

    def _use_weight_decay(self, param: torch.Tensor) -> bool:
        if id(param) in self._exclude_ids:
            return False
        name = self._variable_names.get(id(param), "")
        return self._exclude_pattern is None or self._exclude_pattern.search(name) is None

    def _clip(self, grads: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.clipnorm and self.clipnorm > 0:
            out = []
            for g in grads:
                norm = torch.linalg.vector_norm(g)
                out.append(g * self.clipnorm / torch.clamp(norm, min=self.clipnorm))
            return out
        if self.global_clipnorm and self.global_clipnorm > 0:
            norm = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(g) for g in grads])
            )
            scale = self.global_clipnorm / torch.clamp(norm, min=self.global_clipnorm)
            return [g * scale for g in grads]
        if self.clipvalue and self.clipvalue > 0:
            return [g.clamp(-self.clipvalue, self.clipvalue) for g in grads]
        return grads

    def _apply(self, opt: KerasUpdate, params: list[torch.Tensor], grads: list[torch.Tensor]):
        lr = f32(self._current_learning_rate())
        grads = self._clip(grads)
        if self.weight_decay:
            decayed = [p for p in params if self._use_weight_decay(p)]
            if decayed:
                torch._foreach_mul_(decayed, float(f32(1) - f32(self.weight_decay) * lr))
        slots: dict[str, list[torch.Tensor]] = {n: [] for n in self._slot_names}
        for p in params:
            state = opt.state[p]
            if not state:
                for n in self._slot_names:
                    state[n] = torch.full_like(p, self._slot_init(n))
            for n in self._slot_names:
                slots[n].append(state[n])
        self._update(params, grads, slots, lr, int(self.iterations) + 1)
        self.iterations.assign_add(1)
        for group in opt.param_groups:
            group["lr"] = float(lr)

    def _slot_init(self, name: str) -> float:
        return 0.0

    def _update(
        self,
        params: list[torch.Tensor],
        grads: list[torch.Tensor],
        slots: dict[str, list[torch.Tensor]],
        lr: np.float32,
        step: int,
    ) -> None:
        raise NotImplementedError

    # ----- bookkeeping ----------------------------------------------------------------
    def count_keras_variables(self) -> int:
        """Size of Keras's optimizer variables (iteration, learning_rate, slots per weight)."""
        if self.torch_optimizer is None:
            return 0
        n = sum(p.numel() for g in self.torch_optimizer.param_groups for p in g["params"])
        scalars = 1 + int(isinstance(self._learning_rate, ScalarVariable))
        return scalars + len(self._slot_names) * n

    @property
    def variables(self) -> list[Any]:
        out: list[Any] = [self.iterations]
        if isinstance(self._learning_rate, ScalarVariable):
            out.append(self._learning_rate)
        return out

    def get_config(self) -> dict[str, Any]:
        cfg = {
            k: v
            for k, v in vars(self).items()
            if not k.startswith("_") and k not in ("torch_optimizer", "iterations")
        }
        lr = self._learning_rate
        cfg["learning_rate"] = float(lr) if isinstance(lr, ScalarVariable) else lr
        return cfg

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Optimizer:
        return cls(**config)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["torch_optimizer"] = None
        state["_exclude_pattern"] = (
            None if self._exclude_pattern is None else (self._exclude_pattern.pattern)
        )
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        pattern = state.get("_exclude_pattern")
        state["_exclude_pattern"] = re.compile(pattern) if pattern else None
        self.__dict__.update(state)


def _sqrt_add(tensors: list[torch.Tensor], eps: float) -> list[torch.Tensor]:
    out = torch._foreach_sqrt(tensors)
    torch._foreach_add_(out, eps)
    return out


class SGD(Optimizer):
    def __init__(
        self,
        learning_rate: Any = 0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, **kwargs)
        if not isinstance(momentum, float) or momentum < 0 or momentum > 1:
            raise ValueError("`momentum` must be a float between [0, 1].")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self._slot_names = ("momentum",) if self.momentum != 0 else ()

    def _update(self, params, grads, slots, lr, step) -> None:
        if self.momentum == 0:
            torch._foreach_add_(params, grads, alpha=-float(lr))
            return
        bufs = slots["momentum"]
        torch._foreach_mul_(bufs, self.momentum)
        torch._foreach_add_(bufs, grads, alpha=-float(lr))
        if self.nesterov:
            torch._foreach_add_(params, grads, alpha=-float(lr))
            torch._foreach_add_(params, bufs, alpha=self.momentum)
        else:
            torch._foreach_add_(params, bufs)


class Adam(Optimizer):
    def __init__(
        self,
        learning_rate: Any = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        amsgrad: bool = False,
        weight_decay: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, **kwargs)
        self.beta_1, self.beta_2, self.epsilon, self.amsgrad = beta_1, beta_2, epsilon, amsgrad
        self._slot_names = ("m", "v", "v_hat") if amsgrad else ("m", "v")

    def _update(self, params, grads, slots, lr, step) -> None:
        t = f32(step)
        alpha = lr * np.sqrt(f32(1) - f32(self.beta_2) ** t) / (f32(1) - f32(self.beta_1) ** t)
        m, v = slots["m"], slots["v"]
        torch._foreach_mul_(m, self.beta_1)
        torch._foreach_add_(m, grads, alpha=1 - self.beta_1)
        torch._foreach_mul_(v, self.beta_2)
        torch._foreach_add_(v, torch._foreach_mul(grads, grads), alpha=1 - self.beta_2)
        if self.amsgrad:
            torch._foreach_maximum_(slots["v_hat"], v)
            v = slots["v_hat"]
        step_ = torch._foreach_div(torch._foreach_mul(m, float(alpha)), _sqrt_add(v, self.epsilon))
        torch._foreach_add_(params, step_, alpha=-1)


class AdamW(Adam):
    def __init__(
        self, learning_rate: Any = 0.001, weight_decay: float = 0.004, **kwargs: Any
    ) -> None:
        if weight_decay is None:
            raise ValueError("Argument `weight_decay` must be a float. Received: weight_decay=None")
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, **kwargs)


class RMSprop(Optimizer):
    def __init__(
        self,
        learning_rate: Any = 0.001,
        rho: float = 0.9,
        momentum: float = 0.0,
        epsilon: float = 1e-7,
        centered: bool = False,
        weight_decay: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, **kwargs)
        self.rho, self.momentum, self.epsilon, self.centered = rho, momentum, epsilon, centered
        names = ["velocity"]
        if momentum > 0:
            names.append("momentum")
        if centered:
            names.append("average_gradient")
        self._slot_names = tuple(names)

    def _update(self, params, grads, slots, lr, step) -> None:
        rho = self.rho
        vel = slots["velocity"]
        torch._foreach_mul_(vel, rho)
        torch._foreach_add_(vel, torch._foreach_mul(grads, grads), alpha=1 - rho)
        denominators = torch._foreach_add(vel, self.epsilon)
        if self.centered:
            avg = slots["average_gradient"]
            torch._foreach_mul_(avg, rho)
            torch._foreach_add_(avg, grads, alpha=1 - rho)
            torch._foreach_add_(denominators, torch._foreach_mul(avg, avg), alpha=-1)
        torch._foreach_sqrt_(denominators)
        increments = torch._foreach_div(torch._foreach_mul(grads, float(lr)), denominators)
        if self.momentum > 0:
            mom = slots["momentum"]
            torch._foreach_mul_(mom, self.momentum)
            torch._foreach_add_(mom, increments)
            torch._foreach_add_(params, mom, alpha=-1)
        else:
            torch._foreach_add_(params, increments, alpha=-1)


class Adagrad(Optimizer):
    def __init__(
        self,
        learning_rate: Any = 0.001,
        initial_accumulator_value: float = 0.1,
        epsilon: float = 1e-7,
        weight_decay: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, **kwargs)
        self.initial_accumulator_value, self.epsilon = initial_accumulator_value, epsilon
        self._slot_names = ("accumulator",)

    def _slot_init(self, name: str) -> float:
        return float(self.initial_accumulator_value)

    def _update(self, params, grads, slots, lr, step) -> None:
        acc = slots["accumulator"]
        torch._foreach_add_(acc, torch._foreach_mul(grads, grads))
        denom = torch._foreach_sqrt(torch._foreach_add(acc, self.epsilon))
        torch._foreach_add_(
            params, torch._foreach_div(torch._foreach_mul(grads, float(lr)), denom), alpha=-1
        )


class Adamax(Optimizer):
    def __init__(
        self,
        learning_rate: Any = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        weight_decay: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, **kwargs)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self._slot_names = ("m", "u")

    def _update(self, params, grads, slots, lr, step) -> None:
        beta_1_power = f32(self.beta_1) ** f32(step)
        m, u = slots["m"], slots["u"]
        torch._foreach_mul_(m, self.beta_1)
        torch._foreach_add_(m, grads, alpha=1 - self.beta_1)
        torch._foreach_mul_(u, self.beta_2)
        torch._foreach_maximum_(u, torch._foreach_abs(grads))
        denom = torch._foreach_mul(torch._foreach_add(u, self.epsilon), float(1 - beta_1_power))
        torch._foreach_add_(
            params, torch._foreach_div(torch._foreach_mul(m, float(lr)), denom), alpha=-1
        )


class Nadam(Optimizer):
    def __init__(
        self,
        learning_rate: Any = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        weight_decay: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, **kwargs)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self._slot_names = ("m", "v")
        self._u_product = f32(1.0)

    def count_keras_variables(self) -> int:
        return super().count_keras_variables() + int(self.torch_optimizer is not None)

    def _update(self, params, grads, slots, lr, step) -> None:
        t, t1, decay = f32(step), f32(step + 1), f32(0.96)
        beta_1, beta_2 = f32(self.beta_1), f32(self.beta_2)
        u_t = beta_1 * (f32(1.0) - f32(0.5) * decay**t)
        u_t_1 = beta_1 * (f32(1.0) - f32(0.5) * decay**t1)
        u_product_t = f32(self._u_product * u_t)
        u_product_t_1 = f32(u_product_t * u_t_1)
        beta_2_power = beta_2**t
        self._u_product = u_product_t
        m, v = slots["m"], slots["v"]
        torch._foreach_mul_(m, self.beta_1)
        torch._foreach_add_(m, grads, alpha=1 - self.beta_1)
        torch._foreach_mul_(v, self.beta_2)
        torch._foreach_add_(v, torch._foreach_mul(grads, grads), alpha=1 - self.beta_2)
        m_hat = torch._foreach_add(
            torch._foreach_div(torch._foreach_mul(m, float(u_t_1)), float(1 - u_product_t_1)),
            torch._foreach_div(torch._foreach_mul(grads, float(1 - u_t)), float(1 - u_product_t)),
        )
        v_hat = torch._foreach_div(v, float(1 - beta_2_power))
        torch._foreach_add_(
            params,
            torch._foreach_div(
                torch._foreach_mul(m_hat, float(lr)), _sqrt_add(v_hat, self.epsilon)
            ),
            alpha=-1,
        )


_BY_NAME: dict[str, type[Optimizer]] = {
    "sgd": SGD,
    "adam": Adam,
    "adamw": AdamW,
    "rmsprop": RMSprop,
    "adagrad": Adagrad,
    "adamax": Adamax,
    "nadam": Nadam,
}


def get(identifier: str | Optimizer) -> Optimizer:
    """A string name (``"adam"``, ``"sgd"``, ...) or an instance -> an Optimizer."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    if isinstance(identifier, str):
        raise NotImplementedError(f"Optimizer {identifier!r}. Supported: {sorted(_BY_NAME)}")
    raise ValueError(f"Could not interpret optimizer identifier: {identifier!r}")


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    raise NotImplementedError(
        f"compat.optimizers.{name} is not implemented. Supported: "
        f"{', '.join(cls.__name__ for cls in _BY_NAME.values())}"
    )


__all__ = [
    "SGD",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "Nadam",
    "Optimizer",
    "RMSprop",
    "get",
    "schedules",
]
