"""FineTuner(cache_features=...): cached head-only training inside Trainer.fit."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

import ftlight
from ftlight import FineTuner, ImageDataModule
from ftlight.callbacks.feature_cache import (
    FeatureBatch,
    FeatureCache,
    LoaderDataModule,
    loader_randomness,
    random_transforms,
    stochastic_modules,
)
from ftlight.callbacks.staged import Milestone, StagedUnfreeze
from tests.conftest import make_image_folder, quiet_trainer


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


def trainer(tmp_path, epochs: int = 1, callbacks: list | None = None, **kw) -> L.Trainer:
    return quiet_trainer(tmp_path, max_epochs=epochs, callbacks=callbacks or [], **kw)


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


class KeepRows(L.Callback):
    """The FeatureCache's rows by split at the end of training (it lets them go after fit)."""

    def __init__(self) -> None:
        self.rows: dict = {}

    def on_train_end(self, trainer, pl_module) -> None:
        cache = next(cb for cb in trainer.callbacks if isinstance(cb, FeatureCache))
        self.rows = {key[0]: rows for key, (_, rows) in cache.store.items()}


def model(**kw) -> FineTuner:
    L.seed_everything(0, verbose=False)
    return FineTuner("resnet18", 2, None, image_size=32, optimizer="sgd", lr=0.05, **kw)


def test_cached_fit_matches_uncached_fit(tmp_path) -> None:
    dm = make_dm()
    # the default head_init="auto" probes the cached fit only (it needs the cached rows): the
    # same random start for both, to compare the caching alone
    base = model(freeze=True, head_init="random")
    plain, cached = copy.deepcopy(base), copy.deepcopy(base)
    plain.hparams.cache_features = False
    cached.hparams.cache_features = True
    results = {}
    keep = KeepRows()
    for name, m in (("plain", plain), ("cached", cached)):
        calls = BackboneCalls()
        extra = [keep] if name == "cached" else []
        t = trainer(tmp_path / name, epochs=2, callbacks=[calls, *extra])
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
    val = keep.rows["val"]
    assert len(val) == 6 and len(keep.rows["train"]) == 18
    images = torch.stack([dm.datasets["val"][i][0] for i in range(6)])
    with torch.no_grad():
        assert torch.allclose(cached(FeatureBatch(val.tensors[0])), cached(images), atol=1e-5)
    assert torch.equal(val.tensors[1], dm.datasets["val"].labels)


def test_staged_run_caches_first_phase_then_invalidates_at_milestone(tmp_path) -> None:
    dm = make_dm()
    m = model(freeze=True)  # cache_features=None: automatic in staged runs
    calls, keep = BackboneCalls(), KeepRows()
    staged = StagedUnfreeze([Milestone(epoch=1, groups=["stage4"], lr=0.05)])
    t = trainer(tmp_path, epochs=2, callbacks=[staged, calls, keep])
    layer4 = {n: p.detach().clone() for n, p in m.named_parameters() if ".layer4." in n}
    t.fit(m, datamodule=dm)
    cache = next(cb for cb in t.callbacks if isinstance(cb, FeatureCache))
    assert cache.epochs_cached == [0]
    assert calls.rows == {0: 24, 1: 24}  # cache pass in epoch 0, images again in epoch 1
    assert keep.rows == {}  # dropped at the milestone
    params = dict(m.named_parameters())
    assert any(not torch.equal(v, params[n]) for n, v in layer4.items())


def test_set_freeze_invalidates_and_trainable_backbone_warns(tmp_path) -> None:
    dm = make_dm()
    m = model(freeze=True, cache_features=True)
    keep, calls = KeepRows(), BackboneCalls()
    trainer(tmp_path / "a", callbacks=[keep]).fit(m, datamodule=dm)
    assert set(keep.rows) == {"train", "val"}
    m.set_freeze(3)
    with pytest.warns(UserWarning, match=r"Feature caching is off: the backbone trains"):
        trainer(tmp_path / "b", callbacks=[keep, calls]).fit(m, datamodule=dm)
    assert keep.rows == {} and calls.rows == {0: 24}


def test_augmentation_turns_caching_off_with_a_warning(tmp_path) -> None:
    dm = make_dm(augment=True)
    m = model(freeze=True, cache_features=True)
    calls, keep = BackboneCalls(), KeepRows()
    with pytest.warns(UserWarning, match=r"caching is off: the training transforms are random"):
        trainer(tmp_path, callbacks=[calls, keep]).fit(m, datamodule=dm)
    assert calls.rows == {0: 24}  # images every batch, no caching pass
    assert keep.rows == {}


def test_batchnorm_in_training_mode_turns_caching_off(tmp_path) -> None:
    m = model(freeze=True, cache_features=True, bn="train")
    with pytest.warns(UserWarning, match="not deterministic in training mode"):
        trainer(tmp_path).fit(m, datamodule=make_dm())


def test_automatic_mode_caches_fully_frozen_runs_quietly(tmp_path) -> None:
    # cache_features=None: a fully frozen backbone is static, staged run or not (issue 14)
    m = model(freeze=True)
    keep = KeepRows()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "Feature caching")
        trainer(tmp_path, callbacks=[keep]).fit(m, datamodule=make_dm())
    assert sorted(keep.rows) == ["train", "val"]


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
    keep = KeepRows()
    trainer(tmp_path, callbacks=[keep]).fit(m, datamodule=dm)
    files = sorted(p.name for p in tmp_path.glob("*.npy"))
    assert files == ["train-18x512-f32.npy", "val-6x512-f32.npy"]
    rows = keep.rows["train"]
    assert rows.tensors[0].shape == (18, 512)
    mm = np.load(tmp_path / "train-18x512-f32.npy", mmap_mode="r")
    assert np.array_equal(mm, rows.tensors[0].numpy())


def test_caching_keeps_the_backbone_idle_for_every_later_epoch(tmp_path) -> None:
    """Fails if caching silently stops (e.g. Lightning stops calling the data module's hooks):
    the backbone would run on every batch of every epoch again."""
    dm = make_dm()
    m = model(freeze=True, cache_features=True)
    calls = BackboneCalls()
    # with the sanity check: validation rows are cached before the first epoch
    t = trainer(tmp_path, 3, [calls], num_sanity_val_steps=None)
    t.fit(m, datamodule=dm)
    assert calls.rows == {0: 24}  # 18 train + 6 val rows once; epochs 1 and 2 never call it
    cache = next(cb for cb in t.callbacks if isinstance(cb, FeatureCache))
    assert cache.epochs_cached == [0, 1, 2]
    assert t.reload_dataloaders_every_n_epochs == 0  # the user's setting is back
    assert "train_dataloader" not in vars(dm)  # the data module's hooks are its own again


def test_plain_loaders_say_caching_needs_a_data_module(tmp_path) -> None:
    dm = make_dm()
    loader = dm.train_dataloader()
    m = model(freeze=True, cache_features=True)
    calls = BackboneCalls()
    with pytest.warns(UserWarning, match="needs a LightningDataModule.*train_dataloaders") as seen:
        trainer(tmp_path / "a", epochs=2, callbacks=[calls]).fit(m, train_dataloaders=loader)
    assert sum("Feature caching" in str(w.message) for w in seen) == 1  # said once
    assert calls.rows == {0: 18, 1: 18}  # honest: the backbone ran every epoch
    calls = BackboneCalls()
    trainer(tmp_path / "b", epochs=2, callbacks=[calls]).fit(m, datamodule=LoaderDataModule(loader))
    assert calls.rows == {0: 18}  # the suggested fix caches


def test_feature_batch_marker_not_shape_selects_the_head_path() -> None:
    m = model(freeze=True).eval()
    rows = torch.randn(4, m.backbone.num_features)
    with torch.no_grad():
        assert torch.equal(m(FeatureBatch(rows)), m.head(rows))
        with pytest.raises(ValueError, match="Cached features must have 512 columns"):
            m(FeatureBatch(rows[:, :10]))
        # a plain 2-D tensor of the features' width is an input, never taken for features
        with pytest.raises(ValueError, match=r"expects images .* Received: shape=\(4, 512\)"):
            m(rows)


@pytest.mark.slow
def test_cli_bundled_staged_config_caches_its_frozen_phase(tmp_path) -> None:
    """README: caching "is on automatically in the first, all-frozen phase of a staged run" —
    true for the bundled configs (augment: false); --data.augment true turns it off."""
    make_image_folder(tmp_path / "imgs", per_class=8)

    args = [
        "fit",
        "--config",
        str(Path(ftlight.__file__).parent / "configs" / "efficientnet_lite0.yaml"),
        "--data.root=imgs",
        "--model.image_size=32",
        "--data.batch_size=4",
        "--data.num_workers=0",
        "--trainer.max_epochs=1",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.default_root_dir=run",
    ]

    def fit(*extra: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "ftlight.cli", *args, *extra],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout + proc.stderr

    out = fit()
    assert "FeatureCache: 12 train feature rows (1280,) computed once" in out
    assert "FeatureCache: 4 val feature rows (1280,) computed once" in out
    out = fit("--data.augment=true")
    assert "Feature caching is off: the training transforms are random" in out
    assert "FeatureCache:" not in out


def test_engine_and_compat_use_no_private_lightning_internals() -> None:
    """Private Lightning state (loops' data sources, combined loaders, the batch-transfer
    handler, logger results) changes in minor releases; public hooks only."""
    private = re.compile(
        r"fit_loop|_data_source|_combined_loader|_apply_batch_transfer_handler|_results\b"
        r"|_logger_connector|_data_connector|_accelerator_connector|_checkpoint_connector"
        r"|_call_(lightning|callback)_"
    )
    root = Path(__file__).parents[1]
    hits = [
        f"{path.relative_to(root)}:{n}: {line.strip()}"
        for package in ("ftlight", "compat")
        for path in sorted((root / package).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if private.search(line)
    ]
    assert not hits, "private Lightning internals:\n" + "\n".join(hits)


def test_a_callback_unfreezing_behind_the_cache_fails_loudly(tmp_path) -> None:
    """Training on stale rows would be a silent wrong result: it is an error instead."""

    class UnfreezeAtEpoch1(L.Callback):  # as Lightning's BaseFinetuning does
        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if trainer.current_epoch == 1:
                for p in pl_module.backbone.parameters():
                    p.requires_grad_(True)

    m = model(freeze=True, cache_features=True)
    with pytest.raises(RuntimeError, match="cached feature rows for training in epoch 1, but"):
        trainer(tmp_path, epochs=2, callbacks=[UnfreezeAtEpoch1()]).fit(m, datamodule=make_dm())
