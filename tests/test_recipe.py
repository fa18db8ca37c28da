"""The fine_tune recipe and the fully frozen default path (issue 14), on tiny real runs."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator

import lightning as L
import numpy as np
import pytest
import torch
import yaml

import ftlight
from ftlight import FineTuner, ImageDataModule, recipes
from ftlight.callbacks.feature_cache import FeatureBatch, FeatureCache, random_transforms
from tests.conftest import quiet_trainer, quiet_trainer_options


class BatchKinds(L.Callback):
    """Per epoch: whether each training batch came as cached rows (FeatureBatch) or images."""

    def __init__(self) -> None:
        self.kinds: dict[int, set[str]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        kind = "cached" if isinstance(batch[0], FeatureBatch) else "images"
        self.kinds.setdefault(trainer.current_epoch, set()).add(kind)


class Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def lightning_log() -> Iterator[Messages]:
    handler, logger = Messages(), logging.getLogger("lightning.pytorch")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def make_dm(**kw) -> ImageDataModule:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (24, 16, 16, 3), dtype=np.uint8)
    y = np.repeat([0, 1], 12)
    x[y == 1, :, :, 0] = 255
    return ImageDataModule.from_arrays(x, y, batch_size=8, val_split=0.25, image_size=32, **kw)


def model(**kw) -> FineTuner:
    L.seed_everything(0, verbose=False)
    return FineTuner("resnet18", 2, None, image_size=32, **{"freeze": True, **kw})


def cache_of(trainer: L.Trainer) -> FeatureCache:
    return next(cb for cb in trainer.callbacks if isinstance(cb, FeatureCache))


def test_fine_tune_caches_the_frozen_phase_then_trains_the_top_groups(tmp_path) -> None:
    dm, m, kinds = make_dm(), model(lr=0.05), BatchKinds()
    before = {n: p.detach().clone() for n, p in m.backbone.named_parameters()}
    trainer = m.fine_tune(
        dm,
        epochs=1,
        freeze_epochs=2,
        unfreeze=2,
        backbone_lr=0.01,
        layer_decay=0.5,
        callbacks=[kinds],
        **quiet_trainer_options(tmp_path),
    )
    assert trainer.max_epochs == 3 and trainer.current_epoch == 3
    # frozen phase on cached rows, images once the groups train (batch markers, not timing)
    assert kinds.kinds == {0: {"cached"}, 1: {"cached"}, 2: {"images"}}
    assert cache_of(trainer).epochs_cached == [0, 1]
    assert dm.augment is False  # augment=None settled off: the first epoch is frozen
    # the top two groups (stage3, stage4) trained, at per-group rates; the rest did not
    changed = {n.split(".")[0] for n, p in m.backbone.named_parameters() if not p.equal(before[n])}
    assert changed == {"model"} and all(
        ("layer3" in n or "layer4" in n) == (not p.equal(before[n]))
        for n, p in m.backbone.named_parameters()
    )
    rates = {g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups}
    assert rates["stage4"] == pytest.approx(0.01) and rates["stage3"] == pytest.approx(0.005)
    assert rates["head"] == pytest.approx(0.05)


def test_fine_tune_trainer_of_ones_own_and_bad_arguments(tmp_path) -> None:
    dm, m, kinds = make_dm(augment=False), model(), BatchKinds()
    trainer = L.Trainer(
        max_epochs=2,
        callbacks=[kinds, *ftlight.fine_tune_callbacks(1, 1, unfreeze="all")],
        **quiet_trainer_options(tmp_path),
    )
    assert ftlight.fine_tune(m, dm, 1, 1, trainer=trainer) is trainer
    assert kinds.kinds == {0: {"cached"}, 1: {"images"}}
    with pytest.raises(ValueError, match="max_epochs=5"):
        ftlight.fine_tune(m, dm, 1, 1, max_epochs=5)
    with pytest.raises(ValueError, match="expected max_epochs=3"):
        ftlight.fine_tune(m, dm, 1, 2, trainer=quiet_trainer(tmp_path, max_epochs=3))
    with pytest.raises(ValueError, match=r"epochs must be an integer >= 0\. Received: -1"):
        ftlight.fine_tune(m, dm, -1, 1)


def test_default_fully_frozen_finetuner_caches_and_says_so(tmp_path, lightning_log) -> None:
    dm, m, kinds = make_dm(), model(), BatchKinds()  # every default: augment=None, cache None
    assert dm.augment is True and dm.augment_auto  # before a fit: the old default
    trainer = quiet_trainer(tmp_path, max_epochs=2, callbacks=[kinds])
    trainer.fit(m, dm)
    assert kinds.kinds == {0: {"cached"}, 1: {"cached"}}
    assert cache_of(trainer).epochs_cached == [0, 1]
    assert dm.augment is False and random_transforms(dm.transform_for("train")) == []
    said = [line for line in lightning_log.lines if "augment=None" in line]
    assert len(said) == 1 and "no random augmentation" in said[0]
    assert any("computed once" in line for line in lightning_log.lines)
    # the same data module with a backbone that trains: augmentation comes back (auto)
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[kinds])
    trainer.fit(model(freeze=None), dm)
    assert dm.augment is True and "RandomResizedCrop" in random_transforms(
        dm.transform_for("train")
    )


@pytest.mark.parametrize("augment", [True, False])
def test_explicit_augment_is_never_changed(tmp_path, augment: bool) -> None:
    dm, kinds = make_dm(augment=augment), BatchKinds()
    # frozen (would turn auto augmentation off) with True; trainable (on) with False
    m = model() if augment else model(freeze=None)
    trainer = quiet_trainer(tmp_path, max_epochs=1, callbacks=[kinds])
    trainer.fit(m, dm)
    assert dm.augment is augment and not dm.augment_auto
    assert kinds.kinds == {0: {"images"}}
    assert bool(random_transforms(dm.transform_for("train"))) is augment
    if augment:
        assert "augment" in str(cache_of(trainer).reason)  # caching off, and why


def test_bundled_fine_tune_config_parses_and_matches_the_recipe() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ftlight.cli", "fit", "--config", "fine_tune", "--print_config"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    (milestone,) = cfg["staged"]["milestones"]
    assert milestone["epoch"] == recipes.FREEZE_EPOCHS
    assert cfg["trainer"]["max_epochs"] == recipes.FREEZE_EPOCHS + recipes.EPOCHS
    assert milestone["groups"] == recipes.UNFREEZE and milestone["lr"] is None
    assert milestone["warmup_epochs"] == recipes.WARMUP_EPOCHS
    assert cfg["model"]["freeze"] is True and cfg["data"]["augment"] is False
    assert (
        cfg["model"]["weights"] == "imagenet" and cfg["model"]["backbone"] == "efficientnet_lite0"
    )
    torch.manual_seed(0)  # the config builds (weights=None: nothing to fetch in a test)
    args = {k: v for k, v in cfg["model"].items() if k not in ("num_classes", "class_names")}
    built = FineTuner(**{**args, "weights": None}, num_classes=3)
    resolved = ftlight.StagedUnfreeze(cfg["staged"]["milestones"]).resolve(built)
    assert sorted(resolved) == ["stage4", "stage5", "stage6", "stage7"]
