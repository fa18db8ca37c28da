"""Learning-rate range test for :class:`~ftlight.FineTuner`: Lightning's finder, group ratios kept.

Lightning's finder (``Tuner.lr_find``, the ``LearningRateFinder`` callback) sweeps the learning
rate from ``min_lr`` to ``max_lr`` over ``num_training_steps`` steps and suggests the rate where
the smoothed loss falls fastest. It sets *every* parameter group to the same swept rate, which
would test a FineTuner whose backbone learns as fast as its new head. Here:

* **The sweep keeps the groups' ratios.** The swept rate is the head's; every other group runs
  at it times its configured ratio (``backbone_lr / lr``, ``layer_decay``, a
  :class:`~ftlight.callbacks.StagedUnfreeze` milestone's rate), and groups still gated by
  StagedUnfreeze stay still (rate 0). ``FineTuner.on_train_start`` installs this schedule in
  place of Lightning's, so ``Tuner(trainer).lr_find(model, datamodule=dm)`` sweeps this way too.
* **The suggestion sets ``lr``** (and scales an explicit ``backbone_lr`` by the same factor), so
  the optimizer built from it keeps every ratio; :class:`LRFinder` rebuilds the optimizer
  after the sweep (Lightning's callback would set every group to the suggestion).
* **Results are files:** ``lr_find.png`` (loss against learning rate, the suggestion in red),
  ``lr_find.json`` (points, suggestion, settings) and ``lr_find.csv`` (``lr,loss``).
* **No suggestion is an error** (:class:`LRFinderError`) saying what happened and what to try,
  never a silent default.

``FineTuner(lr="auto")`` adds :class:`LRFinder` to its ``fit``: the sweep runs at the start of
training (the weights, optimizer and data position are restored afterwards), the numeric rate
it found is what checkpoints store, and resuming from one of them does not sweep again.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateFinder
from lightning.pytorch.tuner import lr_finder as _lightning_lr_finder
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import _TunerExitException
from torch.optim.lr_scheduler import LRScheduler

AUTO = "auto"
# The head's rate FineTuner builds its optimizer with while lr="auto" awaits the finder (only
# the groups' ratios matter to the sweep, and the optimizer is rebuilt after it).
PLACEHOLDER_LR = 1e-3
FILES = ("lr_find.png", "lr_find.json", "lr_find.csv")
# Set on the module by LRFinder for the sweep (the Trainer's callbacks are swapped out then).
_GATED_ATTR = "_lr_find_gated"


class LRFinderError(ValueError):
    """The range test gave no usable learning rate."""


def refuse_auto_with_backbone_lr(lr: Any, backbone_lr: Any, flag: str = "") -> None:
    """``lr="auto"`` keeps each group's ratio to the head's rate, which is then unknown: an
    explicit ``backbone_lr`` beside it is refused (``flag``: ``"--model."`` on the CLI)."""
    if is_auto(lr) and backbone_lr is not None:
        raise LRFinderError(
            f"{flag}lr='auto' with {flag}backbone_lr={backbone_lr}: the finder keeps each "
            "group's ratio to the head's rate, which is not known yet. Leave backbone_lr unset "
            "(lr/10, with layer_decay if given), or give a numeric lr."
        )


def is_auto(lr: Any) -> bool:
    return isinstance(lr, str) and lr == AUTO


def numeric_lr(lr: Any) -> float:
    """The head's learning rate to build an optimizer with (``"auto"``: a placeholder)."""
    return PLACEHOLDER_LR if is_auto(lr) else float(lr)


class GroupRatioLR(LRScheduler):
    """The finder's sweep over the head's rate; group ``i`` runs at that rate times ``ratios[i]``.

    Same schedule as Lightning's ``_ExponentialLR``/``_LinearLR`` (the first two steps at
    ``min_lr``, then towards ``max_lr`` at step ``num_iter``); ``lr`` lists the groups' rates
    as Lightning's finder reads them (group 0, the head, is the swept rate).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        ratios: list[float],
        min_lr: float,
        max_lr: float,
        num_iter: int,
        mode: str = "exponential",
    ) -> None:
        if len(ratios) != len(optimizer.param_groups):
            raise ValueError(
                f"{len(ratios)} ratios for {len(optimizer.param_groups)} parameter groups."
            )
        self.ratios, self.min_lr, self.max_lr = list(ratios), min_lr, max_lr
        self.num_iter, self.mode = num_iter, mode
        for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
            group["lr"] = group["initial_lr"] = min_lr * ratio
        self._lr = [min_lr * r for r in ratios]
        super().__init__(optimizer)

    def head_lr(self) -> float:
        r = (self.last_epoch + 1) / self.num_iter
        if self.last_epoch <= 0:
            return self.min_lr
        if self.mode == "linear":
            return self.min_lr + r * (self.max_lr - self.min_lr)
        return self.min_lr * (self.max_lr / self.min_lr) ** r

    def get_lr(self) -> list[float]:
        head = self.head_lr()
        self._lr = [head * ratio for ratio in self.ratios]
        return list(self._lr)

    @property
    def lr(self) -> list[float]:
        return self._lr


def group_ratios(module: Any, gated: set[int] | frozenset[int] = frozenset()) -> list[float]:
    """Each optimizer group's rate over the head's, as ``module.param_groups()`` builds them
    (0 for groups whose parameters are all in ``gated``, a set of ``id(parameter)``)."""
    groups = module.param_groups()
    if not groups or groups[0].get("name") != "head":
        raise ValueError("Expected the head's parameter group first (FineTuner.param_groups).")
    head = groups[0]["lr"]
    ratios = []
    for g in groups:
        params = list(g["params"])
        still = bool(params) and all(id(p) in gated for p in params)
        ratios.append(0.0 if still or not head else g["lr"] / head)
    return ratios


def keep_group_ratios(module: Any) -> bool:
    """During a Lightning LR-finder sweep, replace its schedule (every group at the same rate)
    by :class:`GroupRatioLR`; ``True`` if it did. Called by ``FineTuner.on_train_start``."""
    trainer = module._trainer
    if trainer is None or len(trainer.lr_scheduler_configs) != 1:
        return False
    config = trainer.lr_scheduler_configs[0]
    sweep = config.scheduler
    kinds = (_lightning_lr_finder._ExponentialLR, _lightning_lr_finder._LinearLR)
    if not isinstance(sweep, kinds):
        return False
    optimizer = sweep.optimizer
    gated = getattr(module, _GATED_ATTR, None) or frozenset()
    ratios = group_ratios(module, gated)
    if len(ratios) != len(optimizer.param_groups):
        return False
    mode = "linear" if isinstance(sweep, _lightning_lr_finder._LinearLR) else "exponential"
    config.scheduler = GroupRatioLR(
        optimizer, ratios, sweep.base_lrs[0], sweep.end_lr, sweep.num_iter, mode
    )
    return True


def set_lr(module: Any, lr: float) -> None:
    """Give ``module`` the head rate ``lr``; an explicit ``backbone_lr`` scales by the same
    factor (a placeholder ``"auto"`` has no factor: backbone_lr must then be unset)."""
    hp = module.hparams
    old = hp.get("lr")
    if hp.get("backbone_lr") is not None and not is_auto(old) and old:
        hp.backbone_lr = float(hp.backbone_lr) * lr / float(old)
    hp.lr = float(lr)


def _gated_parameters(trainer: L.Trainer, module: Any) -> frozenset[int]:
    from ftlight.callbacks.staged import StagedUnfreeze

    staged = next((cb for cb in trainer.callbacks if isinstance(cb, StagedUnfreeze)), None)
    if staged is None:
        return frozenset()
    names = staged.gated_parameter_names(module, trainer.current_epoch)
    return frozenset(id(p) for n, p in module.named_parameters() if n in names)


class LRFinder(LearningRateFinder):
    """Lightning's ``LearningRateFinder`` for :class:`~ftlight.FineTuner` (see the module).

    Args:
        min_lr, max_lr: the head's rate at the start and end of the sweep.
        num_training_steps: steps of the sweep, across epochs if an epoch is shorter, within
            the Trainer's ``max_epochs`` (the suggestion leaves out the first 10 and the last).
        mode: ``"exponential"`` or ``"linear"`` increase.
        early_stop_threshold: stop once the smoothed loss exceeds this times its best
            (``None``: never).
        update_attr: set the module's ``lr`` to the suggestion (and rebuild the optimizer).
        only_auto: sweep only while the module's ``lr`` is ``"auto"`` (not on a resume, whose
            checkpoint holds the rate found before).
        save_dir: folder for the plot and points (``None``: the run's log folder,
            ``trainer.log_dir``, or ``default_root_dir``).
        early_exit: stop ``fit`` after the sweep (what ``ftlight lr-find`` does).
    """

    def __init__(
        self,
        min_lr: float = 1e-6,
        max_lr: float = 1.0,
        num_training_steps: int = 100,
        mode: str = "exponential",
        early_stop_threshold: float | None = 4.0,
        update_attr: bool = True,
        only_auto: bool = False,
        save_dir: str | None = None,
        early_exit: bool = False,
    ) -> None:
        if not 0 < min_lr < max_lr or not math.isfinite(max_lr):
            raise ValueError(
                f"Expected 0 < min_lr < max_lr. Received: min_lr={min_lr}, max_lr={max_lr}"
            )
        if mode not in ("exponential", "linear"):
            raise ValueError(f"mode must be 'exponential' or 'linear'. Received: mode={mode!r}")
        if num_training_steps < 13:
            raise ValueError(
                f"num_training_steps must be >= 13 (the suggestion leaves out the first 10 "
                f"and the last step). Received: {num_training_steps}"
            )
        super().__init__(
            min_lr=min_lr,
            max_lr=max_lr,
            num_training_steps=num_training_steps,
            mode=mode,
            early_stop_threshold=early_stop_threshold,
            update_attr=False,  # applied here, keeping the groups' ratios
        )
        self.apply_suggestion = update_attr
        self.only_auto = only_auto
        self.save_dir = save_dir
        self.exit_after = early_exit
        self.suggestion: float | None = None
        self.files: dict[str, Path] = {}
        self.ratios: list[float] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.only_auto and not is_auto(pl_module.hparams.get("lr")):
            return  # resumed: the checkpoint's rate was found before
        self.lr_find(trainer, pl_module)

    def lr_find(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Sweep, save the plot and points, check the suggestion, apply it."""
        if trainer.fast_dev_run:
            if is_auto(pl_module.hparams.get("lr")):
                rank_zero_warn(
                    f"lr='auto' with fast_dev_run: no sweep, lr={PLACEHOLDER_LR} is used."
                )
                set_lr(pl_module, PLACEHOLDER_LR)
            return
        refuse_auto_with_backbone_lr(
            pl_module.hparams.get("lr"), pl_module.hparams.get("backbone_lr")
        )
        gated = _gated_parameters(trainer, pl_module)
        self.ratios = group_ratios(pl_module, gated)
        setattr(pl_module, _GATED_ATTR, gated)
        self._early_exit = False  # Lightning's exit: after the files and the checks below
        try:
            super().lr_find(trainer, pl_module)  # the sweep; sets self.optimal_lr
        finally:
            pl_module.__dict__.pop(_GATED_ATTR, None)
        # The sweep's temporary checkpoint came back through on_load_checkpoint: not a resume.
        pl_module.__dict__.pop("_checkpoint_hparams", None)
        result = self.optimal_lr
        if result is None:
            return
        self.suggestion = suggest(result)
        if trainer.is_global_zero:
            self.files = write_files(result, self._save_dir(trainer), self.suggestion)
        self._check(trainer, result)
        assert self.suggestion is not None
        rank_zero_info(
            f"LRFinder: suggested lr={self.suggestion:.3g} for the head (other groups keep "
            f"their ratios); plot and points: {', '.join(map(str, self.files.values()))}"
        )
        if self.apply_suggestion:
            set_lr(pl_module, self.suggestion)
            # The finder set every group to one rate: build the optimizer (and its schedule)
            # from the module's settings again, as fit would have with this lr.
            trainer.strategy.setup_optimizers(trainer)
        if self.exit_after:
            raise _TunerExitException()

    def _save_dir(self, trainer: L.Trainer) -> Path:
        if self.save_dir is not None:
            return Path(self.save_dir)
        return Path(trainer.log_dir or trainer.default_root_dir)

    def _check(self, trainer: L.Trainer, result: Any) -> None:
        losses = [float(v) for v in result.results.get("loss", [])]
        lrs = [float(v) for v in result.results.get("lr", [])]
        steps, wanted = len(losses), self._num_training_steps
        finite = [v for v in losses if math.isfinite(v)]
        plot = f" (plot: {self.files['png']})" if "png" in self.files else ""
        batches, epochs = trainer.num_training_batches, trainer.max_epochs
        available = batches * epochs if epochs and epochs > 0 and math.isfinite(batches) else None
        if steps < wanted and available is not None and steps >= available:
            # Not a divergence: the sweep never reached the high rates; no suggestion holds.
            reached = f", reaching lr={lrs[-1]:.3g} of max_lr={self._max_lr:g}" if lrs else ""
            raise LRFinderError(
                f"The learning-rate finder ran out of data after {steps} of {wanted} steps"
                f"{reached} (max_epochs={epochs} epochs of {int(batches)} batches; the sweep "
                f"stays within max_epochs){plot}. Raise max_epochs (--trainer.max_epochs), or "
                "sweep fewer steps (>= 13): LRFinder(num_training_steps=...) in the Trainer's "
                "callbacks, --lr_find.num_training_steps for ftlight lr-find."
            )
        if self.suggestion is not None and math.isfinite(self.suggestion) and self.suggestion > 0:
            return
        if steps < wanted:
            where = f" at lr={lrs[-1]:.3g}" if lrs else ""
            why = (
                f"the loss diverged after {steps} of {wanted} steps{where}"
                if finite
                else f"the loss was not finite from the first step ({steps} steps ran)"
            )
        elif steps < 13:
            why = (
                f"{steps} steps ran, and the suggestion leaves out the first 10 and the last "
                "(use num_training_steps >= 13)"
            )
        else:
            why = f"only {len(finite)} of {steps} losses were finite"
        raise LRFinderError(
            f"The learning-rate finder found no suggestion: {why}{plot}; it needs more than 11 "
            f"finite points. Try a lower min_lr (was {self._min_lr:g}) or max_lr (was "
            f"{self._max_lr:g}), more num_training_steps, early_stop_threshold=None, or check "
            "the data and labels; or give a numeric lr."
        )


def suggest(result: Any, skip_begin: int = 10, skip_end: int = 1) -> float | None:
    """The rate where the smoothed loss falls fastest, as Lightning's ``suggestion()`` (same
    skipped points, non-finite losses left out) but differentiated against ``log10(lr)`` in
    exponential mode: Lightning 2.6 differentiates against ``lr`` itself, dividing by steps
    that grow exponentially, which favours the sweep's first rates (on a tiny run it picked
    the top of the initial bump, 100x below the descent; Lightning #21141, #21171).
    Sets ``result._optimal_idx`` for the plot."""
    result._optimal_idx = None
    losses_all = [float(v) for v in result.results.get("loss", [])]
    lrs_all = [float(v) for v in result.results.get("lr", [])]
    index = list(range(len(losses_all)))[skip_begin:-skip_end]
    index = [i for i in index if math.isfinite(losses_all[i]) and lrs_all[i] > 0]
    if len(index) < 2:
        return None
    losses = torch.tensor([losses_all[i] for i in index], dtype=torch.float64)
    lrs = torch.tensor([lrs_all[i] for i in index], dtype=torch.float64)
    x = lrs.log10() if result.mode == "exponential" else lrs
    if not bool((x.diff() > 0).all()):
        return None
    best = int(torch.gradient(losses, spacing=[x])[0].argmin())
    result._optimal_idx = index[best]
    return lrs_all[index[best]]


def write_files(result: Any, folder: Path, suggestion: float | None) -> dict[str, Path]:
    """``lr_find.png`` (Matplotlib, no display needed), ``.json`` and ``.csv`` in ``folder``."""
    from matplotlib.figure import Figure

    from ftlight.files import atomic_path, atomic_write

    folder.mkdir(parents=True, exist_ok=True)
    lrs = [float(v) for v in result.results.get("lr", [])]
    losses = [float(v) for v in result.results.get("loss", [])]
    n = min(len(lrs), len(losses))
    lrs, losses = lrs[:n], losses[:n]
    paths = {ext: folder / f"lr_find.{ext}" for ext in ("png", "json", "csv")}
    figure = Figure(figsize=(6, 4))
    ax = figure.subplots()
    ax.plot(lrs, losses)
    if result.mode == "exponential":
        ax.set_xscale("log")
    ax.set_xlabel("learning rate (head)")
    ax.set_ylabel("smoothed training loss")
    ok = suggestion is not None and math.isfinite(suggestion)
    index = getattr(result, "_optimal_idx", None)
    if ok and index is not None and index < n:
        ax.plot(lrs[index], losses[index], marker="o", markersize=10, color="red")
        ax.set_title(f"suggested lr = {suggestion:.3g}")
    else:
        ax.set_title("no suggestion")
    figure.tight_layout()
    with atomic_path(paths["png"]) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    record = {
        "suggestion": suggestion if ok else None,
        "mode": result.mode,
        "min_lr": result.lr_min,
        "max_lr": result.lr_max,
        "num_training_steps": result.num_training,
        "steps_run": n,
        "points": [
            {"lr": lr, "loss": loss if math.isfinite(loss) else None}
            for lr, loss in zip(lrs, losses, strict=True)
        ],
    }
    atomic_write(paths["json"], json.dumps(record, indent=2))
    with atomic_path(paths["csv"]) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["lr", "loss"])
        writer.writerows(zip(lrs, losses, strict=True))
    return paths


def lr_find(
    model: Any,
    datamodule: Any = None,
    trainer: L.Trainer | None = None,
    *,
    update_attr: bool = True,
    **finder_kwargs: Any,
) -> LRFinder:
    """Run the range test on ``model`` (no training) and return the :class:`LRFinder` (its
    ``suggestion``, ``files``, and Lightning's result as ``optimal_lr``).

    ``trainer`` defaults to a quiet CPU/GPU Trainer in the current folder; ``update_attr``
    sets ``model``'s ``lr`` to the suggestion. Other keywords go to :class:`LRFinder`.
    """
    trainer = trainer or L.Trainer(
        logger=False, enable_checkpointing=False, enable_model_summary=False
    )
    finder = LRFinder(update_attr=update_attr, early_exit=True, **finder_kwargs)
    trainer.callbacks = [finder, *trainer.callbacks]
    try:
        trainer.fit(model, datamodule=datamodule)
    finally:
        trainer.callbacks = [cb for cb in trainer.callbacks if cb is not finder]
    return finder
