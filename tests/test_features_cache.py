"""FineTuner(cache_features=...): cached head-only training inside Trainer.fit."""

from __future__ import annotations

import copy
import warnings

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from ftlight import FineTuner, ImageDataModule
from ftlight.callbacks.feature_cache import (
    FeatureCache,
    FeatureRows,
    loader_randomness,
    random_transforms,
    stochastic_modules,
)
from ftlight.callbacks.staged import Milestone, StagedUnfreeze


def make_dm(augment: bool = False) -> ImageDataModule:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (24, 32, 32, 3), dtype=np.uint8)
    y = np.repeat([0, 1], 12)
    x[y == 1, :, :, 0] = 255
    dm = ImageDataModule.from_arrays(
        x, y, batch_size=8, val_split=0.25, augment=augment, image_size=32
    )
    dm.setup()
    return dm


def trainer(tmp_path, epochs: int = 1, callbacks: list | None = None) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks or [],
    )


class BackboneCalls(L.Callback):
    """Rows the backbone sees per epoch (the caching pass counts in epoch 0)."""

    def __init__(self) -> None:
        self.rows: dict[int, int] = {}
        self.epoch = 0

    def setup(self, trainer, pl_module, stage) -> None:
        def hook(module, args, out):
            self.rows[self.epoch] = self.rows.get(self.epoch, 0) + len(out)

        pl_module.backbone.register_forward_hook(hook)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epoch += 1


def model(**kw) -> FineTuner:
    L.seed_everything(0, verbose=False)
    return FineTuner("resnet18", 2, None, image_size=32, optimizer="sgd", lr=0.05, **kw)


def test_cached_fit_matches_uncached_fit(tmp_path) -> None:
    dm = make_dm()
    base = model(freeze=True)
    plain, cached = copy.deepcopy(base), copy.deepcopy(base)
    plain.hparams.cache_features = False
    cached.hparams.cache_features = True
    results = {}
    for name, m in (("plain", plain), ("cached", cached)):
        calls = BackboneCalls()
        t = trainer(tmp_path / name, epochs=2, callbacks=[calls])
        t.fit(m, datamodule=dm)  # shuffled, seeded: the cached rows come in the same order
        results[name] = (float(t.callback_metrics["val_loss"]), calls.rows)
    for p, c in zip(plain.head.parameters(), cached.head.parameters(), strict=True):
        assert torch.allclose(p, c, atol=1e-5)
    assert results["plain"][0] == pytest.approx(results["cached"][0], abs=1e-5)
    # uncached: 18 train + 6 val rows per epoch; cached: 24 rows once, then none
    assert results["plain"][1] == {0: 24, 1: 24}
    assert results["cached"][1] == {0: 24}
    cache = next(cb for cb in t.callbacks if isinstance(cb, FeatureCache))
    assert cache.epochs_cached == [0, 1]
    # same weights: cached rows give the uncached logits
    cached.eval()
    rows = [v[1] for v in cached._feature_cache.values() if isinstance(v[1], FeatureRows)]
    val = next(r for r in rows if len(r) == 6)
    images = torch.stack([dm.datasets["val"][i][0] for i in range(6)])
    with torch.no_grad():
        assert torch.allclose(cached(val.tensors[0]), cached(images), atol=1e-5)
    assert torch.equal(val.tensors[1], dm.datasets["val"].labels)


def test_staged_run_caches_first_phase_then_invalidates_at_milestone(tmp_path) -> None:
    dm = make_dm()
    m = model(freeze=True)  # cache_features=None: automatic in staged runs
    calls = BackboneCalls()
    staged = StagedUnfreeze([Milestone(epoch=1, groups=["stage4"], lr=0.05)])
    t = trainer(tmp_path, epochs=2, callbacks=[staged, calls])
    layer4 = {n: p.detach().clone() for n, p in m.named_parameters() if ".layer4." in n}
    t.fit(m, datamodule=dm)
    cache = next(cb for cb in t.callbacks if isinstance(cb, FeatureCache))
    assert cache.epochs_cached == [0]
    assert calls.rows == {0: 24, 1: 24}  # cache pass in epoch 0, images again in epoch 1
    assert not m._feature_cache  # dropped at the milestone
    params = dict(m.named_parameters())
    assert any(not torch.equal(v, params[n]) for n, v in layer4.items())


def test_set_freeze_invalidates_and_trainable_backbone_warns(tmp_path) -> None:
    dm = make_dm()
    m = model(freeze=True, cache_features=True)
    trainer(tmp_path / "a").fit(m, datamodule=dm)
    assert m._feature_cache
    m.set_freeze(3)
    assert not getattr(m, "_feature_cache", None)
    with pytest.warns(UserWarning, match=r"Feature caching is off: the backbone trains"):
        trainer(tmp_path / "b").fit(m, datamodule=dm)
    assert not getattr(m, "_feature_cache", None)


def test_augmentation_turns_caching_off_with_a_warning(tmp_path) -> None:
    dm = make_dm(augment=True)
    m = model(freeze=True, cache_features=True)
    calls = BackboneCalls()
    with pytest.warns(UserWarning, match=r"caching is off: the training transforms are random"):
        trainer(tmp_path, callbacks=[calls]).fit(m, datamodule=dm)
    assert calls.rows == {0: 24}  # images every batch, no caching pass
    assert not getattr(m, "_feature_cache", None)


def test_batchnorm_in_training_mode_turns_caching_off(tmp_path) -> None:
    m = model(freeze=True, cache_features=True, bn="train")
    with pytest.warns(UserWarning, match="not deterministic in training mode"):
        trainer(tmp_path).fit(m, datamodule=make_dm())


def test_automatic_mode_is_quiet_outside_staged_runs(tmp_path) -> None:
    m = model(freeze=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "Feature caching")
        trainer(tmp_path).fit(m, datamodule=make_dm())
    assert not getattr(m, "_feature_cache", None)


def test_checks_find_random_transforms_and_stochastic_modules() -> None:
    dm = make_dm(augment=True)
    names = random_transforms(dm.transform_for("train"))
    assert "RandomResizedCrop" in names and "RandomHorizontalFlip" in names
    assert random_transforms(dm.transform_for("val")) == []

    class Noisy(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i):
            return torch.rand(3), 0

    reason = loader_randomness(torch.utils.data.DataLoader(Noisy(), batch_size=2))
    assert reason is not None and "change between reads" in reason
    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5), nn.BatchNorm1d(2), nn.Dropout(0.0))
    assert stochastic_modules(net.train()) == ["1", "2"]
    assert stochastic_modules(net.eval()) == []


def test_large_caches_are_memory_mapped(tmp_path) -> None:
    dm = make_dm()
    m = model(freeze=True)
    cache = FeatureCache(True, cache_dir=str(tmp_path), max_memory_bytes=1)
    m.configure_callbacks = lambda: [cache]
    trainer(tmp_path).fit(m, datamodule=dm)
    files = sorted(p.name for p in tmp_path.glob("*.npy"))
    assert files == ["train-18x512-f32.npy", "val-6x512-f32.npy"]
    rows = next(v[1] for k, v in m._feature_cache.items() if k[0] == "train")
    assert rows.tensors[0].shape == (18, 512)
    mm = np.load(tmp_path / "train-18x512-f32.npy", mmap_mode="r")
    assert np.array_equal(mm, rows.tensors[0].numpy())
