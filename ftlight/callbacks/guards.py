"""Guards against lost work: stop on a non-finite loss, and never leave a half-written file.

* :class:`NonFiniteLossGuard` (a Lightning callback; the CLI attaches it by default) stops
  training with :class:`NonFiniteLossError` naming the epoch and batch where the loss or a
  trained weight stopped being finite. It checks on the device and reads the result back
  only every few batches and before any checkpoint is written, so training never waits for
  it and the last checkpoint stays the last good one.
* :class:`AtomicCheckpointIO` (a Lightning checkpoint plugin) and :func:`atomic_path` write
  to a temporary file in the target's own directory, ``fsync`` it, then ``os.replace`` it
  over the target: a kill at any moment leaves either the old file or the new one.

Lightning's own ``TorchCheckpointIO`` is atomic only when the temporary directory is on the
same file system as the checkpoint: fsspec's transaction writes to ``tempfile.mkstemp()``
(``$TMPDIR``) and ``shutil.move`` falls back to a copy across file systems, and nothing is
fsync'ed. :class:`AtomicCheckpointIO` does not depend on ``$TMPDIR``.
"""

from __future__ import annotations

import os
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from ftlight.files import atomic_path


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf loss or weight; raised by :class:`NonFiniteLossGuard`."""


def _last_checkpoint(trainer: L.Trainer) -> str | None:
    paths = []
    for cb in trainer.checkpoint_callbacks:
        for attr in ("last_model_path", "best_model_path"):
            path = getattr(cb, attr, "")
            if path and os.path.isfile(path):
                paths.append(path)
    return max(paths, key=os.path.getmtime) if paths else None


class NonFiniteLossGuard(L.Callback):
    """Stop training when the loss (or a trained weight) becomes NaN or Inf.

    The checks never make the host wait for the device: at every batch the loss and the
    largest magnitude of the trainable weights (one fused reduction, after the optimizer step)
    are folded into a flag that stays on the device, together with the index of the first bad
    batch. The flag is read back (one host-device sync) every ``every_n_steps`` batches, at
    each epoch end, before validation and before every checkpoint is written, so:

    * no checkpoint of non-finite weights is ever written (checkpoint callbacks run after this
      one, and Lightning calls ``on_save_checkpoint`` before writing); with a
      ``save_weights_only`` checkpoint callback, whose saves skip callback hooks, the flag is
      read after every batch instead;
    * the error names the epoch and batch where the values first stopped being finite, even
      when it is raised a few batches later (the bad steps in between are never saved).

    Args:
        check_weights: also check the trainable weights after every step.
        every_n_steps: read the on-device flag back every this many training batches.
    """

    def __init__(self, check_weights: bool = True, every_n_steps: int = 50) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1. Received: {every_n_steps}")
        self.check_weights = check_weights
        self.every_n_steps = every_n_steps
        self._read_every = every_n_steps
        # (epoch, batch, global step before, global step after) of each batch since the last
        # read; the device flags index into it.
        self._batches: list[list[int]] = []
        self._first_bad: torch.Tensor | None = None  # index into _batches; -1: all finite
        self._what: torch.Tensor | None = None  # 1: the loss, 2: the weights
        self._loss: torch.Tensor | None = None  # the first non-finite loss

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        device = pl_module.device
        self._batches = []
        self._first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self._what = torch.zeros((), dtype=torch.long, device=device)
        self._loss = torch.zeros((), dtype=torch.float32, device=device)
        weights_only = any(
            getattr(cb, "save_weights_only", False) for cb in trainer.checkpoint_callbacks
        )
        self._read_every = 1 if weights_only else self.every_n_steps

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        self._batches.append([trainer.current_epoch, batch_idx, step, step])

    def _mark(self, bad: torch.Tensor, what: int, loss: torch.Tensor | None = None) -> None:
        """Record the current batch as the first bad one if ``bad`` and none was before."""
        if self._first_bad is None or not self._batches:
            return
        first = bad & (self._first_bad < 0)
        self._first_bad = torch.where(first, len(self._batches) - 1, self._first_bad)
        self._what = torch.where(first, what, self._what)
        if loss is not None:
            self._loss = torch.where(first, loss, self._loss)

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        with torch.no_grad():
            loss = loss.detach()
            self._mark(~torch.isfinite(loss).all(), 1, loss.float().reshape(-1)[0])

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self._batches:
            self._batches[-1][3] = trainer.global_step
        if self.check_weights:
            params = [p for p in pl_module.parameters() if p.requires_grad]
            if params:
                with torch.no_grad():  # max |w| is finite iff every weight is; never overflows
                    largest = torch.nn.utils.get_total_norm(params, float("inf"))
                    self._mark(~torch.isfinite(largest), 2)
        if len(self._batches) >= self._read_every:
            self._check(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer, pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer, pl_module)  # validation may end in a checkpoint

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer, pl_module)

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._check(trainer, pl_module)

    def _check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Read the device flag back (the only sync) and stop if any batch went bad."""
        if self._first_bad is None or not self._batches:
            return
        first = int(self._first_bad)
        bad = first >= 0
        if trainer.world_size > 1:  # every rank must stop together, or DDP hangs
            bad_anywhere = bool(trainer.strategy.reduce_boolean_decision(bad, all=False))
        else:
            bad_anywhere = bad
        if bad_anywhere:
            self._stop(trainer, pl_module, first if bad else None)
        self._batches.clear()

    def _stop(self, trainer: L.Trainer, pl_module: L.LightningModule, first: int | None) -> None:
        now = self._batches[-1]
        noticed = f"noticed at epoch {now[0]}, batch {now[1]}"
        if first is None:
            what, where = "Another process's loss or weights became NaN/Inf", noticed
        else:
            epoch, batch, step_before, step_after = self._batches[first]
            if int(self._what) == 1:
                what, step = f"The training loss became {float(self._loss)}", step_before
            else:
                names = [
                    n
                    for n, p in pl_module.named_parameters()
                    if p.requires_grad and not bool(torch.isfinite(p.detach()).all())
                ]
                what = f"Weights became NaN/Inf ({names[:5]}) after the step"
                step = step_after
            where = f"epoch {epoch}, batch {batch} (0-based; global step {step}; {noticed})"
        last = _last_checkpoint(trainer)
        keep = (
            f"The last good checkpoint is {last}; resume from it with a lower learning rate."
            if last
            else "No checkpoint had been written yet."
        )
        raise NonFiniteLossError(
            f"{what} at {where}. Training was stopped before the bad values were saved. "
            f"{keep} Usual causes: a learning rate too high, NaN/Inf in the inputs or labels, "
            "or fp16 overflow. Try a lower learning rate, gradient clipping "
            "(Trainer(gradient_clip_val=1.0), --trainer.gradient_clip_val=1.0) or "
            "precision='bf16-mixed'/'32'."
        )


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` that writes next to the target and ``os.replace``s it (fsync'ed).

    Pass it as ``L.Trainer(plugins=[AtomicCheckpointIO()])``; the CLI and the demo use it by
    default. Remote URLs (``s3://``…) are handed to Lightning's own writer.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                "AtomicCheckpointIO does not take storage_options. Received: "
                f"storage_options={storage_options!r}"
            )
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path)
            return
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(checkpoint, f)
