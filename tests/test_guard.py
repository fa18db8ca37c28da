"""NonFiniteLossGuard: checks on the device, reads back rarely, still names the exact batch and
never lets a checkpoint of non-finite weights be written.

The older guarantees (NaN loss at a given step, Inf weight before a per-step checkpoint) are
in test_bad_input.py."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import ftlight
from ftlight.callbacks.guards import NonFiniteLossError, NonFiniteLossGuard

GUARDS_FILE = sys.modules[NonFiniteLossGuard.__module__].__file__
BATCHES_PER_EPOCH = 6


def _data() -> ftlight.ImageDataModule:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (BATCHES_PER_EPOCH * 4, 32, 32, 3)).astype(np.uint8)
    return ftlight.ImageDataModule.from_arrays(
        x, np.arange(len(x)) % 2, batch_size=4, val_split=0.0, num_workers=0
    )


def _model() -> ftlight.FineTuner:
    return ftlight.FineTuner(
        "resnet18", num_classes=2, image_size=32, freeze=True, cache_features=False
    )


def _trainer(tmp_path: Path, callbacks: list, **kwargs) -> L.Trainer:
    options = dict(
        max_epochs=3,
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=any(isinstance(cb, ModelCheckpoint) for cb in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        accelerator="cpu",
        callbacks=callbacks,
    )
    options.update(kwargs)
    return L.Trainer(**options)


class Poison(L.Callback):
    """Make the loss (NaN input) or a head weight (Inf) non-finite at one batch."""

    def __init__(self, what: str, epoch: int, batch: int) -> None:
        self.what, self.epoch, self.batch = what, epoch, batch
        self.seen: list[tuple[int, int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append((trainer.current_epoch, batch_idx))
        if self.what == "loss" and (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            batch[0].fill_(float("nan"))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.what == "weights" and (trainer.current_epoch, batch_idx) == (
            self.epoch,
            self.batch,
        ):
            with torch.no_grad():
                pl_module.head[-1].weight[0, 0] = float("inf")


def _finite(checkpoint: Path) -> bool:
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.parametrize(
    ("what", "every_n_steps", "batch", "noticed"),
    [
        ("loss", 50, 3, 5),  # read before the checkpoint at the epoch's last batch
        ("weights", 50, 3, 5),
        ("weights", 2, 2, 3),  # read every second batch
    ],
)
def test_read_back_rarely_still_names_the_exact_batch_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, what: str, every_n_steps: int, batch: int, noticed: int
) -> None:
    poison = Poison(what, epoch=1, batch=batch)
    # A checkpoint at the end of each epoch (Lightning 2.6 writes last.ckpt with save_top_k=0
    # only on a step trigger).
    ckpt = ModelCheckpoint(
        tmp_path / "ckpt", every_n_train_steps=BATCHES_PER_EPOCH, save_last=True, save_top_k=0
    )
    trainer = _trainer(tmp_path, [poison, NonFiniteLossGuard(every_n_steps=every_n_steps), ckpt])
    message = "The training loss became nan" if what == "loss" else r"Weights became NaN/Inf"
    with pytest.raises(NonFiniteLossError, match=rf"{message}.* at epoch 1, batch {batch} ") as err:
        trainer.fit(_model(), _data())
    assert f"noticed at epoch 1, batch {noticed})" in str(err.value)
    assert poison.seen[-1] == (1, noticed)  # stopped in the epoch it happened
    last = tmp_path / "ckpt" / "last.ckpt"
    assert str(last) in str(err.value), str(err.value)
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["global_step"] == BATCHES_PER_EPOCH  # epoch 0's, not epoch 1's bad weights
    assert _finite(last)


def test_weights_only_checkpoints_every_step_never_hold_bad_weights(tmp_path: Path) -> None:
    """Lightning skips callback hooks for weights-only saves: the guard then reads every step."""
    poison = Poison("weights", epoch=0, batch=2)
    ckpt = ModelCheckpoint(
        tmp_path / "ckpt",
        every_n_train_steps=1,
        save_last=True,
        save_top_k=0,
        save_weights_only=True,
    )
    trainer = _trainer(tmp_path, [poison, NonFiniteLossGuard(), ckpt])
    with pytest.raises(NonFiniteLossError, match=r"at epoch 0, batch 2 "):
        trainer.fit(_model(), _data())
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == 2
    assert _finite(tmp_path / "ckpt" / "last.ckpt")


SYNCS = ("__bool__", "__int__", "__float__", "__index__", "item", "tolist", "numpy", "cpu")


@pytest.mark.parametrize("every_n_steps", [50, 4])
def test_no_host_device_sync_at_every_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, every_n_steps: int
) -> None:
    """Every way of reading a tensor back to the host, called from the guard, is counted: the
    old guard read the loss and each weight back after every step."""
    calls: list[str] = []

    def counting(name: str):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            frame = sys._getframe(1)
            while frame is not None:
                if frame.f_code.co_filename == GUARDS_FILE:
                    calls.append(name)
                    break
                frame = frame.f_back
            return original(self, *args, **kwargs)

        return wrapper

    for name in SYNCS:
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    epochs = 2
    trainer = _trainer(
        tmp_path, [NonFiniteLossGuard(every_n_steps=every_n_steps)], max_epochs=epochs
    )
    trainer.fit(_model(), _data())
    monkeypatch.undo()
    steps = epochs * BATCHES_PER_EPOCH
    assert trainer.global_step == steps
    # One read every N batches and one at each epoch end, nothing per step.
    assert 0 < len(calls) <= steps // every_n_steps + epochs, calls
