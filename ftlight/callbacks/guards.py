"""Guards against lost work: stop on a non-finite loss, and never leave a half-written file.

* :class:`NonFiniteLossGuard` (a Lightning callback; the CLI attaches it by default) stops
  training with :class:`NonFiniteLossError` naming the epoch and batch as soon as the loss or
  a trained weight stops being finite: before that step's backward pass, and before any
  checkpoint of the bad weights is written, so the last checkpoint stays the last good one.
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

    The loss is checked before its backward pass (the bad step is never applied); trainable
    weights are checked after each optimizer step, before checkpoint callbacks run (Lightning
    orders them last), so no checkpoint of non-finite weights is ever written.

    Args:
        check_weights: also check the trainable weights after every step.
    """

    def __init__(self, check_weights: bool = True) -> None:
        self.check_weights = check_weights
        self.batch_idx = 0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.batch_idx = batch_idx  # for the message (on_before_backward is not told)

    def _stop(self, trainer: L.Trainer, what: str) -> None:
        epoch = trainer.current_epoch
        batch = self.batch_idx
        last = _last_checkpoint(trainer)
        keep = (
            f"The last good checkpoint is {last}; resume from it with a lower learning rate."
            if last
            else "No checkpoint had been written yet."
        )
        raise NonFiniteLossError(
            f"{what} at epoch {epoch}, batch {batch} (0-based; global step "
            f"{trainer.global_step}). Training was stopped before the bad values were saved. "
            f"{keep} Usual causes: a learning rate too high, NaN/Inf in the inputs or labels, "
            "or fp16 overflow. Try a lower learning rate, gradient clipping "
            "(Trainer(gradient_clip_val=1.0), --trainer.gradient_clip_val=1.0) or "
            "precision='bf16-mixed'/'32'."
        )

    def _any(self, trainer: L.Trainer, bad: bool) -> bool:
        if trainer.world_size > 1:  # every rank must stop together, or DDP hangs
            return bool(trainer.strategy.reduce_boolean_decision(bad, all=False))
        return bad

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if self._any(trainer, bad):
            value = float(loss.detach().float().reshape(-1)[0])
            self._stop(trainer, f"The training loss became {value}")

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self.check_weights:
            return
        params = [p.detach() for p in pl_module.parameters() if p.requires_grad]
        bad = bool(params) and not all(bool(torch.isfinite(p).all()) for p in params)
        if self._any(trainer, bad):
            names = [
                n
                for n, p in pl_module.named_parameters()
                if p.requires_grad and not bool(torch.isfinite(p.detach()).all())
            ]
            self._stop(trainer, f"Weights became NaN/Inf ({names[:5]}) after the step")


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
