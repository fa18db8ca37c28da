"""EMA of weights (ftlight.callbacks.EMA, FineTuner(ema_decay=...)) on tiny real runs."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from ftlight import FineTuner
from ftlight.callbacks import EMA, FeatureCache
from ftlight.callbacks.feature_cache import weights_version
from tests.conftest import quiet_trainer, two_class_arrays_dm

DECAY = 0.8


make_dm = two_class_arrays_dm


def model(**kw) -> FineTuner:
    L.seed_everything(0, verbose=False)
    kw.setdefault("ema_decay", DECAY)
    return FineTuner("test_efficientnet", 2, None, image_size=32, lr=0.05, **kw)


def trainer(root: Path, epochs: int, callbacks: list, **kw) -> L.Trainer:
    options = {"max_epochs": epochs, "callbacks": callbacks, "enable_checkpointing": True, **kw}
    return quiet_trainer(root, **options)


def params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class RawWeights(L.Callback):
    """The module's own weights after every optimizer step, and validation losses."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []
        self.val_losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.steps.append(params(pl_module))

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.val_losses.append(float(trainer.callback_metrics["val_loss"]))


def manual_ema(steps: list[dict[str, torch.Tensor]], warmup: bool = True) -> dict:
    """The average by hand: update n (1, 2, ...) at min(DECAY, (1 + n) / (10 + n)) with the
    warm-up (timm's rule), DECAY throughout without."""
    average = {k: v.clone() for k, v in steps[0].items()}
    for n, state in enumerate(steps[1:], start=1):
        decay = min(DECAY, (1 + n) / (10 + n)) if warmup else DECAY
        for k, v in state.items():
            if v.is_floating_point():
                average[k] = decay * average[k] + (1 - decay) * v
    return average


def close(a: dict, b: dict, keys=None) -> bool:
    keys = keys or [k for k in a if a[k].is_floating_point()]
    return all(torch.allclose(a[k], b[k], atol=1e-6) for k in keys)


def test_ema_is_what_validation_scores_the_module_holds_and_checkpoints_save(tmp_path) -> None:
    # bn="train": the BatchNorm statistics move too, and are averaged with the weights
    m, dm, raw = model(bn="train"), make_dm(), RawWeights()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    t = trainer(tmp_path, 2, [raw, ckpt])
    t.fit(m, datamodule=dm)
    assert any(isinstance(cb, EMA) for cb in t.callbacks)  # added by ema_decay
    expected, final_raw = manual_ema(raw.steps), raw.steps[-1]
    stats = [k for k in expected if k.endswith("running_mean")]
    assert stats and not close(raw.steps[0], final_raw, stats)
    held = params(m)
    trained = [k for k in held if k.startswith("head.")]
    assert close(held, expected)  # the module holds the average after fit
    assert not close(held, final_raw, trained)  # which is not the raw weights
    # validation scored the average: validate on the module reproduces the last val_loss
    (scores,) = t.validate(m, datamodule=dm, verbose=False)
    assert scores["val_loss"] == pytest.approx(raw.val_losses[-1], abs=1e-6)
    # the raw weights score differently
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert close(saved["state_dict"], expected) and close(saved["current_model_state"], final_raw)
    raw_model = model(bn="train")
    raw_model.load_state_dict(saved["current_model_state"])
    (raw_scores,) = trainer(tmp_path, 1, []).validate(raw_model, datamodule=dm, verbose=False)
    assert raw_scores["val_loss"] != pytest.approx(scores["val_loss"], abs=1e-4)
    # predict/export load the checkpoint's state_dict: the average
    loaded = FineTuner.from_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    assert close(params(loaded), expected)
    (tested,) = trainer(tmp_path, 1, []).test(
        model(bn="train"),
        dataloaders=dm.val_dataloader(),
        ckpt_path=ckpt.last_model_path,
        verbose=False,
    )
    assert tested["test_loss"] == pytest.approx(scores["val_loss"], abs=1e-6)


def test_resume_restores_the_average_and_continues_it(tmp_path) -> None:
    dm = make_dm()
    whole = model()
    trainer(tmp_path / "whole", 2, []).fit(whole, datamodule=dm)
    first = model()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    trainer(tmp_path / "a", 1, [ckpt]).fit(first, datamodule=dm)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)

    class AtStart(L.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            ema = next(cb for cb in trainer.callbacks if isinstance(cb, EMA))
            self.average, self.current = params(ema.average_model), params(pl_module)

    seen = AtStart()
    resumed = model()
    trainer(tmp_path / "b", 2, [seen]).fit(
        resumed, datamodule=dm, ckpt_path=tmp_path / "ckpt" / "last.ckpt"
    )
    assert close(seen.average, saved["state_dict"])
    assert close(seen.current, saved["current_model_state"])
    assert not close(seen.average, seen.current)
    assert close(params(resumed), params(whole))  # same average as the uninterrupted run


def test_cached_head_only_run_keeps_its_cache_and_averages_the_head(tmp_path) -> None:
    m, dm, raw = model(freeze=True, cache_features=True), make_dm(), RawWeights()
    backbone = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    version = weights_version(m.backbone)
    calls = []
    m.backbone.register_forward_hook(lambda mod, args, out: calls.append(len(out)))
    t = trainer(tmp_path, 3, [raw])
    t.fit(m, datamodule=dm)
    cache = next(cb for cb in t.callbacks if isinstance(cb, FeatureCache))
    assert cache.epochs_cached == [0, 1, 2]
    assert sum(calls) == 32  # features of 24 + 8 images computed once, never again
    for k, v in m.backbone.state_dict().items():  # frozen weights and BN buffers untouched
        assert torch.equal(v, backbone[k]), k
    assert weights_version(m.backbone) == version  # never even rewritten (no swap, no copy)
    expected = manual_ema(raw.steps)
    head = [k for k in expected if k.startswith("head.")]
    assert close(params(m), expected, head)
    assert not close(params(m), raw.steps[-1], head)


def test_without_warmup_the_decay_holds_from_the_first_update(tmp_path) -> None:
    m, dm, raw = model(ema_decay=None, bn="train"), make_dm(), RawWeights()
    t = trainer(tmp_path, 2, [raw, EMA(decay=DECAY, warmup=False)])
    t.fit(m, dm)
    assert len(raw.steps) >= 6
    held = params(m)
    assert close(held, manual_ema(raw.steps, warmup=False))
    assert not close(held, manual_ema(raw.steps, warmup=True))  # the two rules differ here


def test_bad_ema_settings_are_refused() -> None:
    with pytest.raises(ValueError, match=r"ema_decay must be between 0 and 1 .* Received: 1.5"):
        FineTuner("test_efficientnet", 2, None, ema_decay=1.5)
    with pytest.raises(ValueError, match=r"EMA decay must be between 0 and 1 .* Received: 0"):
        EMA(decay=0)
