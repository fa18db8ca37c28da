"""The trainer mixin that ``Model`` inherits (Keras's ``keras/src/trainers/trainer.py``):
``compile()`` and the typed compile configuration it produces. The loop that runs
``fit`` / ``evaluate`` / ``predict`` is the backend trainer, :class:`compat.engine.TorchTrainer`
(Keras's ``keras/src/backend/torch/trainer.py``).

Import order: ``models`` -> ``engine`` -> ``trainer`` -> layers, losses, metrics, optimizers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from compat import losses, mixed_precision, optimizers
from compat import metrics as metrics_mod
from compat.layers.base import inference_modules


@dataclass
class CompileConfig:
    """What ``compile()`` was given and what it resolved it to."""

    optimizer: Any  # as given: a name (saved as such) or the optimizer object
    loss: Any  # as given
    metrics: list[Any] = field(default_factory=list)  # as given
    loss_fn: losses.Loss | None = None
    metric_objs: list[Any] = field(default_factory=list)
    cache_features: bool = True

    def compile_kwargs(self) -> dict[str, Any]:
        """The ``compile()`` arguments that rebuild this configuration (saved with a model)."""
        return {
            "optimizer": self.optimizer,
            "loss": self.loss,
            "metrics": list(self.metrics),
            "cache_features": self.cache_features,
        }


class Trainer:
    """Compile state and ``compile()``; mixed into ``Model`` before ``Layer``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._compile_config: CompileConfig | None = None
        # no ``optimizer`` until compile(): Keras raises AttributeError before it too
        self.stop_training = False
        self.history: Any = None

    @property
    def compiled(self) -> bool:
        """Whether ``compile()`` was called (Keras's ``model.compiled``)."""
        return self._compile_config is not None

    def compile(
        self,
        optimizer: Any = "rmsprop",
        loss: Any = None,
        loss_weights: Any = None,
        metrics: Any = None,
        weighted_metrics: Any = None,
        run_eagerly: bool = False,
        steps_per_execution: int = 1,
        jit_compile: Any = "auto",
        auto_scale_loss: bool = True,
        *,
        cache_features: bool = True,
    ) -> None:
        """Configure training; trainability changes made before take effect now (Keras).

        ``run_eagerly``: compat always runs eagerly (like Keras's torch backend without
        ``jit_compile``), so both values behave as in Keras. ``auto_scale_loss=False`` with
        a ``mixed_float16`` policy is not supported (Lightning scales the loss).

        ``cache_features`` (an ftlight extension, not in Keras): ``fit`` computes the outputs
        of a frozen, deterministic base once and trains the head on them while that is safe
        (see :mod:`compat.feature_cache`); ``False`` recomputes the base every step.
        """
        if not auto_scale_loss and mixed_precision.global_policy().name == "mixed_float16":
            raise NotImplementedError("compile(auto_scale_loss=False) with mixed_float16")
        if loss_weights is not None:
            hint = ""
            if isinstance(loss_weights, (list, tuple)) and any(
                isinstance(w, str) for w in loss_weights
            ):
                hint = (
                    f" Received loss_weights={list(loss_weights)!r}: in Keras 3 the third "
                    "positional argument of compile() is loss_weights; did you mean "
                    "metrics=...?"
                )
            raise NotImplementedError(f"compile(loss_weights=...): multi-output losses.{hint}")
        if weighted_metrics:
            raise NotImplementedError("compile(weighted_metrics=...)")
        if steps_per_execution != 1:
            raise NotImplementedError("compile(steps_per_execution > 1)")
        if jit_compile is True:
            raise NotImplementedError("compile(jit_compile=True)")
        if isinstance(loss, (list, dict)):
            raise NotImplementedError("compile(loss=list/dict): multi-output models")
        if isinstance(metrics, dict):
            raise NotImplementedError("compile(metrics=dict): multi-output models")
        opt = optimizers.get(optimizer)
        opt.torch_optimizer = None
        self._compile_config = CompileConfig(
            optimizer=optimizer if isinstance(optimizer, str) else opt,
            loss=loss,
            metrics=list(metrics or []),
            loss_fn=losses.get(loss) if loss is not None else None,
            metric_objs=[metrics_mod.get(m) for m in (metrics or [])],
            cache_features=bool(cache_features),
        )
        self.optimizer = opt
        self._apply_trainable()

    def _require_compiled(self, what: str) -> CompileConfig:
        """The compile configuration; an error when ``what`` needs one that is missing."""
        config = self._compile_config
        if config is None:
            raise RuntimeError(f"You must call `compile()` before using the model ({what}).")
        if config.loss_fn is None and what != "predict":
            raise ValueError("compile() was called without a `loss`; pass one to train/evaluate.")
        return config

    def _apply_trainable(self) -> None:
        """Materialise ``trainable`` flags as ``requires_grad`` and list inference modules."""
        for var in self.weights:  # type: ignore[attr-defined]  # from Layer
            value = var.value
            if isinstance(value, torch.nn.Parameter):
                value.requires_grad_(var.trainable)
        self._inference_modules = inference_modules(self)  # type: ignore[arg-type]


__all__ = ["CompileConfig", "Trainer"]
