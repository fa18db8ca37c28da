"""Training recipes on the Lightning ``Trainer``: :func:`fine_tune` (fastai's
``fine_tune(epochs, freeze_epochs)``, the transfer-learning recipe in one call).

One ``Trainer.fit`` in two phases, both driven by public callbacks:

1. ``freeze_epochs`` **frozen epochs**: only the head trains, on backbone features computed once
   (:class:`~ftlight.callbacks.FeatureCache`; the first epoch pays one backbone pass, the
   others take milliseconds). No random augmentation in this phase: caching a few augmented
   views was not needed to reach the measured accuracy (``benchmarks/README.md``), and an
   :class:`~ftlight.ImageDataModule` with ``augment=None`` (its default) turns it off for the
   fit, logged once; an explicit ``augment=True`` is kept (and then no phase is cached).
2. ``epochs`` **unfrozen epochs**: the top ``unfreeze`` layer groups join
   (:class:`~ftlight.callbacks.StagedUnfreeze`, BatchNorm kept in inference mode), each at its
   own learning rate (``backbone_lr``, scaled by ``layer_decay`` per group from the top down),
   after a linear warm-up of ``warmup_epochs``. The cache is dropped at the milestone.

The Trainer is the user's: :func:`fine_tune` passes ``**trainer_kwargs`` (loggers, callbacks,
precision, devices, ...) to ``L.Trainer``, sets only ``max_epochs`` and adds the
:class:`~ftlight.callbacks.StagedUnfreeze`; :func:`fine_tune_callbacks` returns that callback
for a Trainer built by hand (``max_epochs=freeze_epochs + epochs``). The bundled CLI config
``ftlight fit --config fine_tune`` is the same recipe.

Defaults were measured on scikit-learn's digits (EfficientNet-Lite0, ImageNet weights, 96 px,
2 CPU cores; ``benchmarks/bench_transfer.py``).
"""

from __future__ import annotations

from typing import Any

import lightning as L

from ftlight.callbacks.staged import Milestone, StagedUnfreeze

# Measured on digits (benchmarks/results/transfer_cpu.json), see the module docstring.
FREEZE_EPOCHS = 20
EPOCHS = 3
UNFREEZE = 4
WARMUP_EPOCHS = 0.3


def fine_tune_callbacks(
    epochs: int = EPOCHS,
    freeze_epochs: int = FREEZE_EPOCHS,
    *,
    unfreeze: int | str | list[str] = UNFREEZE,
    warmup_epochs: float = WARMUP_EPOCHS,
    unfrozen_bn: str = "inference",
) -> list[L.Callback]:
    """The callbacks of the :func:`fine_tune` recipe, for a Trainer with
    ``max_epochs=freeze_epochs + epochs``: one :class:`~ftlight.callbacks.StagedUnfreeze`
    whose milestone unfreezes ``unfreeze`` (top N layer groups, ``"all"`` or names) at epoch
    ``freeze_epochs``, at the module's backbone learning rates, warmed up linearly."""
    _check_epochs(epochs, freeze_epochs)
    if epochs == 0:
        return []  # the frozen phase only: nothing unfreezes
    milestone = Milestone(
        epoch=freeze_epochs, groups=unfreeze, lr=None, warmup_epochs=warmup_epochs
    )
    return [StagedUnfreeze([milestone], unfrozen_bn=unfrozen_bn)]  # type: ignore[arg-type]


def fine_tune(
    model: Any,
    datamodule: L.LightningDataModule,
    epochs: int = EPOCHS,
    freeze_epochs: int = FREEZE_EPOCHS,
    *,
    unfreeze: int | str | list[str] = UNFREEZE,
    lr: float | None = None,
    backbone_lr: float | None = None,
    layer_decay: float | None = None,
    warmup_epochs: float = WARMUP_EPOCHS,
    trainer: L.Trainer | None = None,
    **trainer_kwargs: Any,
) -> L.Trainer:
    """Train the head on cached features for ``freeze_epochs``, then fine-tune the top
    ``unfreeze`` layer groups for ``epochs`` (see the module docstring); returns the Trainer
    (``trainer.test(model, datamodule)`` next).

    Args:
        model: a :class:`~ftlight.FineTuner`. With ``freeze_epochs`` its whole backbone is
            frozen first (fastai's ``fine_tune`` calls ``freeze()`` too, whatever ``freeze``
            said), so only the head trains, on cached features; at the milestone the top
            ``unfreeze`` groups join and the rest stay frozen (``unfreeze="all"`` for all).
        datamodule: the data (a LightningDataModule, so the frozen phase can be cached).
        epochs: unfrozen epochs; freeze_epochs: head-only epochs before them.
        unfreeze: top N layer groups, ``"all"``, or group names.
        lr, backbone_lr, layer_decay: set on the model when given (head rate, backbone rate,
            per-group factor from the top down); ``None`` keeps the model's.
        warmup_epochs: linear warm-up of the unfrozen groups' rates.
        trainer: a Trainer of your own, built with :func:`fine_tune_callbacks` among its
            callbacks and ``max_epochs=freeze_epochs + epochs``; otherwise one is built from
            ``trainer_kwargs`` (any ``L.Trainer`` argument except ``max_epochs``).
    """
    _check_epochs(epochs, freeze_epochs)
    for name, value in (("lr", lr), ("backbone_lr", backbone_lr), ("layer_decay", layer_decay)):
        if value is not None:
            if value <= 0:
                raise ValueError(f"fine_tune: {name} must be > 0. Received: {value!r}")
            model.hparams[name] = value
    total = freeze_epochs + epochs
    if trainer is None:
        if "max_epochs" in trainer_kwargs:
            raise ValueError(
                "fine_tune sets max_epochs to freeze_epochs + epochs "
                f"({freeze_epochs} + {epochs}). Received: max_epochs="
                f"{trainer_kwargs['max_epochs']!r}; pass epochs/freeze_epochs instead."
            )
        callbacks = list(trainer_kwargs.pop("callbacks", None) or [])
        callbacks += fine_tune_callbacks(
            epochs, freeze_epochs, unfreeze=unfreeze, warmup_epochs=warmup_epochs
        )
        trainer = L.Trainer(max_epochs=total, callbacks=callbacks, **trainer_kwargs)
    else:
        if trainer_kwargs:
            raise ValueError(
                f"fine_tune: pass either trainer= or Trainer arguments, not both. Received: "
                f"{sorted(trainer_kwargs)}"
            )
        staged = any(isinstance(cb, StagedUnfreeze) for cb in trainer.callbacks)
        if trainer.max_epochs != total or (epochs and not staged):
            raise ValueError(
                f"fine_tune: the given Trainer has max_epochs={trainer.max_epochs} and "
                f"callbacks {[type(cb).__name__ for cb in trainer.callbacks]}; expected "
                f"max_epochs={total} and fine_tune_callbacks({epochs}, {freeze_epochs}) among "
                "its callbacks."
            )
    if freeze_epochs:
        model.set_freeze(True)  # the frozen phase trains the head only
    trainer.fit(model, datamodule=datamodule)
    return trainer


def _check_epochs(epochs: int, freeze_epochs: int) -> None:
    for name, value in (("epochs", epochs), ("freeze_epochs", freeze_epochs)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"fine_tune: {name} must be an integer >= 0. Received: {value!r}")
    if epochs + freeze_epochs == 0:
        raise ValueError("fine_tune: epochs + freeze_epochs must be at least 1. Received: 0 + 0")
