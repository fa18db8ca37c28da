"""Staged fine-tuning: unfreeze backbone layer groups at epoch milestones, DDP- and resume-safe.

Design (see ``scripts/README.md``, "Staged unfreezing"):

* **Groups are created up front.** At ``setup`` (before Lightning builds the optimizer and
  wraps the model in DDP) every scheduled group gets ``requires_grad=True`` and its own named
  optimizer parameter groups, at the milestone's learning rate. ``requires_grad`` never
  changes afterwards, so the DDP reducer, built once, covers every parameter that will ever
  train (the failure of Lightning #20340 is a reducer built without them), and the optimizer
  has the same groups in every phase, so its state always loads on resume (#21901).
* **Gated, not removed.** Before each optimizer step (after DDP has all-reduced the
  gradients, so every rank sees the same thing), the gradients of groups whose milestone has
  not been reached are set to ``None``: the optimizer skips them entirely (no update, no weight
  decay, no momentum/Adam state). After its milestone a group warms up linearly from 0 to its
  learning rate over ``warmup_epochs``, applied as a factor on the step and composed with any
  LR scheduler of the module.
* **The phase is a function of the epoch** and is checkpointed (``state_dict``: phase and the
  step each milestone started, for the warm-up), so ``--ckpt_path last`` resumes before a
  milestone (it unfreezes on time) or after it (the groups keep training at their rates).
* **BatchNorm of a gated group runs in inference mode** (``ftlight_inference`` on its layers,
  re-applied every epoch, also after SyncBatchNorm conversion); after its milestone it stays
  in inference mode (``unfrozen_bn="inference"``, the Keras transfer-learning recipe) or
  trains (``"train"``).

The price of the design is that gated groups still get gradients computed (and all-reduced)
while gated; freeze groups that never unfreeze with ``FineTuner(freeze=...)`` instead.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ftlight.models.freezing import INFERENCE_ATTR, enforce_bn_policy


@dataclass
class Milestone:
    """Unfreeze ``groups`` at the start of ``epoch``.

    Args:
        epoch: first epoch (0-based) in which the groups train.
        groups: layer-group names (``["stage4"]``), ``"all"``, or an integer N for the N
            top-most layer groups of the backbone.
        lr: learning rate of these groups (``None``: the module's backbone learning rate).
        warmup_epochs: linear warm-up of that learning rate, in epochs (may be fractional).
    """

    epoch: int
    groups: list[str] | int | str = 1
    lr: float | None = None
    warmup_epochs: float = 0.0


class StagedUnfreeze(Callback):
    """Freeze->unfreeze schedule over a :class:`~ftlight.FineTuner`'s backbone layer groups.

    Args:
        milestones: when to unfreeze what (see :class:`Milestone`); YAML example::

            staged:
              milestones:
                - {epoch: 2, groups: 1, lr: 1.0e-4, warmup_epochs: 1}
                - {epoch: 4, groups: [stage3], lr: 3.0e-5}

        unfrozen_bn: BatchNorm of a group after its milestone: ``"inference"`` (moving
            statistics, never updated) or ``"train"`` (batch statistics).
    """

    def __init__(
        self,
        milestones: list[Milestone] | None = None,
        unfrozen_bn: Literal["inference", "train"] = "inference",
    ) -> None:
        super().__init__()
        if unfrozen_bn not in ("inference", "train"):
            raise ValueError(
                f"unfrozen_bn must be 'inference' or 'train'. Received: {unfrozen_bn!r}"
            )
        self.milestones = [
            m if isinstance(m, Milestone) else Milestone(**m) for m in milestones or []
        ]
        for m in self.milestones:
            if m.epoch < 0 or m.warmup_epochs < 0:
                raise ValueError(f"Milestone epoch and warmup_epochs must be >= 0. Received: {m}")
        self.unfrozen_bn = unfrozen_bn
        self.group_milestone: dict[str, int] = {}
        self.start_steps: dict[int, int] = {}
        self.phase = 0
        self._saved_lr: dict[int, float] = {}
        self._hooked: set[int] = set()

    # ---- resolution ---------------------------------------------------------------------
    def resolve(self, pl_module: L.LightningModule) -> dict[str, int]:
        """Layer-group name -> index of the milestone that unfreezes it."""
        backbone = getattr(pl_module, "backbone", None)
        if backbone is None or not hasattr(backbone, "layer_groups"):
            raise TypeError(
                "StagedUnfreeze needs a module with `backbone.layer_groups` (ftlight.FineTuner). "
                f"Received: {type(pl_module).__name__}"
            )
        names = [g.name for g in backbone.layer_groups]
        out: dict[str, int] = {}
        for index, m in enumerate(self.milestones):
            if m.groups == "all":
                chosen = list(names)
            elif isinstance(m.groups, int):
                if not 1 <= m.groups <= len(names):
                    raise ValueError(
                        f"Milestone groups={m.groups}: expected 1..{len(names)} top layer groups "
                        f"of {backbone.name} ({names})."
                    )
                chosen = names[len(names) - m.groups :]
            else:
                groups = [m.groups] if isinstance(m.groups, str) else list(m.groups)
                unknown = [g for g in groups if g not in names]
                if unknown:
                    raise ValueError(
                        f"Milestone at epoch {m.epoch}: no layer group {unknown} in "
                        f"{backbone.name}. Layer groups (stem first): {names}"
                    )
                chosen = groups
            for name in chosen:
                out.setdefault(name, index)  # an earlier milestone keeps a group
        return out

    def reached(self, index: int, epoch: int) -> bool:
        return self.milestones[index].epoch <= epoch

    def gated_parameter_names(self, pl_module: L.LightningModule, epoch: int) -> set[str]:
        """Parameters (names as in ``pl_module.named_parameters()``) still gated in ``epoch``.

        They have ``requires_grad=True`` but never step before their milestone, so the
        weights stay as they are (what :class:`~ftlight.callbacks.FeatureCache` relies on).
        """
        if not self.milestones:
            return set()
        milestone_of = self.group_milestone or self.resolve(pl_module)
        params = dict(pl_module.backbone.model.named_parameters())
        gated = {
            id(params[name])
            for group in pl_module.backbone.layer_groups
            if group.name in milestone_of and not self.reached(milestone_of[group.name], epoch)
            for name in group.param_names
        }
        return {name for name, p in pl_module.named_parameters() if id(p) in gated}

    # ---- hooks --------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.milestones:
            return
        self.group_milestone = self.resolve(pl_module)
        if stage != "fit":
            return
        backbone = pl_module.backbone
        params = dict(backbone.model.named_parameters())
        group_lrs = dict(getattr(pl_module, "group_lrs", {}) or {})
        scheduled: set[str] = set()
        for group in backbone.layer_groups:
            if group.name not in self.group_milestone:
                continue
            for name in group.param_names:
                params[name].requires_grad_(True)  # once, before DDP and the optimizer exist
                scheduled.add(f"model.{name}")
            lr = self.milestones[self.group_milestone[group.name]].lr
            if lr is not None:
                group_lrs[group.name] = lr
        pl_module.group_lrs = group_lrs
        if hasattr(pl_module, "frozen_names"):
            pl_module.frozen_names = [n for n in pl_module.frozen_names if n not in scheduled]
        self._apply_phase(trainer, pl_module, trainer.current_epoch)
        rank_zero_info(self.gating_summary(pl_module, trainer.current_epoch))

    def gating_summary(self, pl_module: L.LightningModule, epoch: int) -> str:
        """One line for the model summary's reader: which of the parameters it counts as
        trainable are gated (``requires_grad=True``, but no update) until their milestone."""
        gated = self.gated_parameter_names(pl_module, epoch)
        if not gated:
            return "StagedUnfreeze: no parameter is gated; every trainable parameter trains."
        params = dict(pl_module.named_parameters())
        count = sum(params[n].numel() for n in gated)
        milestone_of = self.group_milestone or self.resolve(pl_module)
        when = ", ".join(
            f"{group} from epoch {self.milestones[index].epoch}"
            for group, index in milestone_of.items()
            if not self.reached(index, epoch)
        )
        return (
            f"StagedUnfreeze: {count:,} of the parameters counted as trainable are gated (not "
            f"updated) until their milestone: {when} (epochs count from 0, as in Lightning's "
            "progress bar)."
        )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.milestones:
            return
        epoch = trainer.current_epoch
        for index, m in enumerate(self.milestones):
            if m.epoch <= epoch and index not in self.start_steps:
                # Resumed past a milestone from a checkpoint without our state: start now.
                first = m.epoch == epoch
                self.start_steps[index] = trainer.global_step if first else -(10**9)
        self._apply_phase(trainer, pl_module, epoch)
        pl_module.log("staged_phase", float(self.phase), on_step=False, on_epoch=True)

    def _apply_phase(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int) -> None:
        self.phase = sum(m.epoch <= epoch for m in self.milestones)
        model = pl_module.backbone.model
        for group in pl_module.backbone.layer_groups:
            index = self.group_milestone.get(group.name)
            if index is None:
                continue
            inference = not self.reached(index, epoch) or self.unfrozen_bn == "inference"
            for module_name in group.module_names:
                module = model.get_submodule(module_name)
                setattr(module, INFERENCE_ATTR, True if inference else None)
        if pl_module.training:
            pl_module.train()
        else:
            enforce_bn_policy(pl_module.backbone, getattr(pl_module.hparams, "bn", "frozen"))

    def _steps_per_epoch(self, trainer: L.Trainer) -> float:
        batches = trainer.num_training_batches
        if not isinstance(batches, (int, float)) or math.isinf(batches) or batches <= 0:
            return 1.0
        return max(1.0, math.ceil(batches / max(1, trainer.accumulate_grad_batches)))

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not self.milestones:
            return
        epoch = trainer.current_epoch
        self._saved_lr = {}
        if id(optimizer) not in self._hooked:
            # Undo the warm-up factor right after the step, before Lightning steps the LR
            # schedulers (which run before on_train_batch_end and would otherwise be undone).
            optimizer.register_step_post_hook(lambda opt, *_: self._restore_lr(opt))
            self._hooked.add(id(optimizer))
        for i, group in enumerate(optimizer.param_groups):
            index = self.group_milestone.get(group.get("name", ""))
            if index is None:
                continue
            if not self.reached(index, epoch):
                for p in group["params"]:
                    p.grad = None  # gated: the optimizer skips it (no step, decay or state)
                continue
            warmup = self.milestones[index].warmup_epochs * self._steps_per_epoch(trainer)
            if warmup > 0:
                done = trainer.global_step - self.start_steps.get(index, trainer.global_step)
                factor = min(1.0, (done + 1) / warmup)
                if factor < 1.0:
                    self._saved_lr[i] = group["lr"]
                    group["lr"] = group["lr"] * factor

    def _restore_lr(self, optimizer: torch.optim.Optimizer) -> None:
        for i, lr in self._saved_lr.items():
            optimizer.param_groups[i]["lr"] = lr
        self._saved_lr = {}

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        # Fallback when no step ran (e.g. AMP skipped it on inf gradients): the base LR
        # must be back before checkpoints and the next step.
        if self._saved_lr:
            for optimizer in trainer.optimizers:
                self._restore_lr(optimizer)

    # ---- state --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "start_steps": dict(self.start_steps),
            "milestones": [asdict(m) for m in self.milestones],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("milestones", [])
        if saved != [asdict(m) for m in self.milestones]:
            rank_zero_warn(
                f"StagedUnfreeze: the checkpoint was written with milestones {saved}; "
                f"continuing with {[asdict(m) for m in self.milestones]}."
            )
        self.start_steps = {int(k): int(v) for k, v in state_dict.get("start_steps", {}).items()}
        self.phase = int(state_dict.get("phase", 0))
