"""RandAugment/TrivialAugment, mixup/cutmix and test-time augmentation, on tiny real runs."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from ftlight import FineTuner, ImageDataModule
from ftlight.callbacks.feature_cache import (
    CachingUnavailableError,
    FeatureCache,
    cache_features,
    loader_randomness,
)
from ftlight.cli.predict import main as predict_main
from ftlight.cli.predict import predict_probabilities
from ftlight.data.fast_decode import BatchDecoder
from ftlight.data.transforms import eval_transform
from ftlight.tta import CROP_FRACTION
from tests.conftest import make_image_folder, quiet_trainer


def arrays(n: int = 24, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)
    y = np.arange(n) % classes
    x[..., 0] = np.where(y[:, None, None] == 0, 250, x[..., 0])
    return x, y


def make_dm(classes: int = 3, **kw) -> ImageDataModule:
    x, y = arrays(classes=classes)
    kw = {"batch_size": 8, "val_split": 0.25, "augment": False, "image_size": 32, **kw}
    dm = ImageDataModule.from_arrays(x, y, **kw)
    dm.setup()
    return dm


def trainer(tmp_path: Path, **kw) -> L.Trainer:
    return quiet_trainer(tmp_path, **{"max_epochs": 1, **kw})


def model(num_classes: int = 3, **kw) -> FineTuner:
    L.seed_everything(0, verbose=False)
    kw = {"image_size": 32, "optimizer": "sgd", "lr": 0.05, **kw}
    return FineTuner("resnet18", num_classes, None, **kw)


def names(transform) -> list[str]:
    return [type(t).__name__ for t in transform.transforms]


# ---- RandAugment / TrivialAugment ---------------------------------------------------------
def test_auto_augment_policies_run_after_the_geometry_on_every_training_path() -> None:
    dm = make_dm(augment=True, auto_augment="randaugment")
    steps = names(dm.transform_for("train"))
    assert steps == [
        "ToImage",
        "RandomResizedCrop",
        "RandomHorizontalFlip",
        "RandAugment",
        "ToDtype",
        "Normalize",
    ]
    assert "RandAugment" not in names(dm.transform_for("val"))  # evaluation stays plain
    # Without random crops: the eval geometry, then the policy (spellings are forgiving).
    dm = make_dm(augment=False, auto_augment="TrivialAugment")
    assert dm.auto_augment == "trivialaugment"
    assert names(dm.transform_for("train"))[-3:] == ["TrivialAugmentWide", "ToDtype", "Normalize"]
    assert loader_randomness(dm.loader("train")) == (
        "the training transforms are random (TrivialAugmentWide)"
    )
    # The GPU batch decoder (here on the CPU) and the decoded-once split carry it too.
    for augment in (False, True):
        decoder = BatchDecoder(dm.data_config, augment=augment, auto_augment="rand", device="cpu")
        assert "RandAugment" in names(decoder.geometry)
        images = decoder([torch.frombuffer(bytearray(_png(40)), dtype=torch.uint8)])
        assert images.shape == (1, 3, 32, 32)
    # Backwards compatible: no policy unless asked.
    assert "RandAugment" not in names(make_dm(augment=True).transform_for("train"))


def _png(size: int) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), 120, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_auto_augment_on_decoded_folder_images_is_applied_every_epoch(tmp_path) -> None:
    root = make_image_folder(tmp_path / "imgs", per_class=3)
    dm = ImageDataModule(
        str(root),
        batch_size=2,
        val_split=0.0,
        augment=False,
        auto_augment="trivialaugment",
        image_size=32,
        num_workers=0,
        decode_cache=str(tmp_path / "decoded"),
    )
    dataset = dm.loader("train").dataset
    assert "TrivialAugmentWide" in names(dataset.transform)
    torch.manual_seed(0)
    draws = [dataset[0][0] for _ in range(6)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])  # random, not decoded once


def test_auto_augment_makes_feature_caching_decline(tmp_path) -> None:
    dm = make_dm(auto_augment="randaugment")
    m = model(freeze=True, cache_features=True)
    with pytest.warns(UserWarning, match=r"caching is off: the training transforms are random"):
        t = trainer(tmp_path, limit_train_batches=1, limit_val_batches=1)
        t.fit(m, datamodule=dm)
    cache = next(cb for cb in t.callbacks if isinstance(cb, FeatureCache))
    assert cache.epochs_cached == [] and "RandAugment" in str(cache.reason)
    with pytest.raises(CachingUnavailableError, match=r"auto_augment='randaugment'"):
        cache_features(dm, m.backbone, progress=False)


def test_bad_auto_augment_names_received_and_expected() -> None:
    with pytest.raises(ValueError) as err:
        ImageDataModule(None, auto_augment="autoaugment")
    assert str(err.value) == (
        "auto_augment must be None, 'randaugment' or 'trivialaugment'. Received: 'autoaugment'"
    )
    with pytest.raises(ValueError, match=r"Received: 3"):
        ImageDataModule(None, auto_augment=3)


# ---- mixup / cutmix -----------------------------------------------------------------------
class Recording(FineTuner):
    """A FineTuner that keeps what its training steps saw (it changes nothing)."""

    def on_fit_start(self) -> None:
        self.seen: list[dict] = []

    def training_step(self, batch, batch_idx):
        self.seen.append({"x": batch[0].clone(), "y": batch[1].clone()})
        return super().training_step(batch, batch_idx)

    def forward(self, x):
        if self.training:
            self.seen[-1]["input"] = x.detach().clone()
        return super().forward(x)

    def soft_target_loss(self, logits, targets):
        loss = super().soft_target_loss(logits, targets)
        self.seen[-1].update(logits=logits.detach(), targets=targets, loss=loss.detach())
        return loss


def _fit_recording(tmp_path: Path, **kw) -> list[dict]:
    L.seed_everything(0, verbose=False)
    m = Recording("resnet18", 3, None, image_size=32, freeze=True, **kw)
    trainer(tmp_path, limit_train_batches=2, limit_val_batches=0).fit(m, datamodule=make_dm())
    assert len(m.seen) == 2
    return m.seen


def test_mixup_mixes_images_and_labels_and_the_loss_is_soft_cross_entropy(tmp_path) -> None:
    smoothing, classes = 0.1, 3
    for step in _fit_recording(tmp_path, mixup_alpha=0.4, label_smoothing=smoothing):
        x, y, mixed, targets = step["x"], step["y"], step["input"], step["targets"]
        assert targets.shape == (len(y), classes)
        assert torch.allclose(targets.sum(1), torch.ones(len(y)))
        assert not torch.equal(targets, F.one_hot(y, classes).float())  # mixed, not one-hot
        # Image i is mixed with image i-1, with the weight its label got.
        different = (y != y.roll(1)).nonzero().flatten()
        assert len(different) > 0
        for i in different.tolist():
            lam = targets[i, y[i]]
            assert 0 < lam < 1
            assert targets[i, y[i - 1]] == pytest.approx(1 - float(lam), abs=1e-6)
            assert torch.allclose(mixed[i], lam * x[i] + (1 - lam) * x[i - 1], atol=1e-5)
        # The loss: cross-entropy against the smoothed soft targets, as timm's Mixup gives.
        smooth = targets * (1 - smoothing) + smoothing / classes
        by_hand = -(smooth * step["logits"].log_softmax(1)).sum(1).mean()
        assert float(step["loss"]) == pytest.approx(float(by_hand), rel=1e-5)


def test_cutmix_pastes_a_box_whose_area_is_the_label_weight(tmp_path) -> None:
    for step in _fit_recording(tmp_path, cutmix_alpha=1.0):
        x, y, mixed, targets = step["x"], step["y"], step["input"], step["targets"]
        assert torch.allclose(targets.sum(1), torch.ones(len(y)))
        for i in (y != y.roll(1)).nonzero().flatten().tolist():
            from_other = (mixed[i] == x[i - 1]).all(0) & (mixed[i] != x[i]).any(0)
            from_self = (mixed[i] == x[i]).all(0)
            assert bool((from_other | from_self).all())  # every pixel from one of the two
            share = float(from_other.float().mean())
            assert targets[i, y[i - 1]] == pytest.approx(share, abs=1e-6)


def test_mixing_makes_caching_decline_and_mixup_prob_zero_caches(tmp_path) -> None:
    dm = make_dm()
    m = model(freeze=True, cache_features=True, mixup_alpha=0.2)
    assert m.mixes_inputs
    with pytest.warns(UserWarning, match=r"caching is off: the model mixes training images"):
        t = trainer(tmp_path / "a", limit_val_batches=1)
        t.fit(m, datamodule=dm)
    assert next(cb for cb in t.callbacks if isinstance(cb, FeatureCache)).epochs_cached == []
    m.hparams.mixup_prob = 0.0  # e.g. a frozen phase without mixing: cached again
    assert not m.mixes_inputs
    t = trainer(tmp_path / "b", limit_val_batches=1)
    t.fit(m, datamodule=dm)
    assert next(cb for cb in t.callbacks if isinstance(cb, FeatureCache)).epochs_cached == [0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"task": "binary", "num_classes": 1, "mixup_alpha": 0.2},
            "mixup/cutmix need task='multiclass' (soft targets over classes). Received: "
            "task='binary' with mixup_alpha=0.2, cutmix_alpha=0.0.",
        ),
        ({"cutmix_alpha": -1}, "cutmix_alpha must be a number >= 0 (0: off). Received: -1"),
        ({"mixup_alpha": "0.2"}, "mixup_alpha must be a number >= 0 (0: off). Received: '0.2'"),
        ({"mixup_prob": 1.5}, "mixup_prob must be a probability in [0, 1]. Received: 1.5"),
        (
            {"tta": "mirror"},
            "tta must be None, 'flip', 'crops' or 'flip+crops'. Received: 'mirror'",
        ),
    ],
)
def test_bad_mixing_and_tta_options_name_received_and_expected(kwargs, message) -> None:
    kwargs = {"num_classes": 3, **kwargs}
    with pytest.raises(ValueError) as err:
        FineTuner("resnet18", weights=None, **kwargs)
    assert str(err.value) == message


# ---- test-time augmentation ---------------------------------------------------------------
def _views_by_hand(x: torch.Tensor, mode: str) -> list[torch.Tensor]:
    views = [x]
    if "crops" in mode:
        side = round(x.shape[-1] * CROP_FRACTION)
        corners = TF.five_crop(x, [side, side])[:4]  # top-left, top-right, bottom-l, bottom-r
        views += [TF.resize(c, list(x.shape[-2:]), antialias=True) for c in corners]
    if "flip" in mode:
        views += [TF.horizontal_flip(v) for v in views]
    return views


@pytest.mark.parametrize("task", ["multiclass", "binary"])
def test_tta_predictions_average_the_views_probabilities(tmp_path, task) -> None:
    classes = 3 if task == "multiclass" else 2
    m = model(num_classes=classes if task == "multiclass" else 1, task=task).eval()
    loader = make_dm(classes=classes, batch_size=6).loader("val", shuffle=False)
    x, y = next(iter(loader))
    assert len(y) == 6
    modes = ("flip", "crops", "flip+crops") if task == "multiclass" else ("flip",)
    with torch.no_grad():
        plain = m.probabilities(m(x))
        # Each view of "flip+crops" on its own: [image, 4 corners, their 5 mirrors].
        views = torch.stack([m.probabilities(m(v)) for v in _views_by_hand(x, modes[-1])])
        subset = {"flip": [0, len(views) // 2], "crops": [0, 1, 2, 3, 4], "flip+crops": None}
        for mode in modes:
            m.hparams.tta = mode
            got = m.predict_step((x, y), 0)
            assert got.shape == plain.shape
            by_hand = views if subset[mode] is None else views[subset[mode]]
            assert torch.allclose(got, by_hand.mean(0), atol=1e-5)
            assert not torch.allclose(got, plain, atol=1e-4)  # the views do change it
    # Trainer.test scores the averaged probabilities (loss: their negative log-likelihood).
    m.hparams.tta = "flip"
    result = trainer(tmp_path).test(m, dataloaders=loader, verbose=False)[0]
    mean = views[subset["flip"]].mean(0)
    if task == "multiclass":
        loss = F.nll_loss(mean.log(), y)
        acc = (mean.argmax(1) == y).float().mean()
    else:
        loss = F.binary_cross_entropy(mean, y.float())
        acc = ((mean > 0.5).long() == y).float().mean()
    assert result["test_loss"] == pytest.approx(float(loss), rel=1e-4)
    assert result["test_acc"] == pytest.approx(float(acc))


def _checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    root = make_image_folder(tmp_path / "imgs", per_class=4)
    dm = ImageDataModule(str(root), batch_size=4, val_split=0.0, image_size=32, num_workers=0)
    m = model(num_classes=2, freeze=True, mixup_alpha=0.2, tta="flip")
    t = trainer(tmp_path, limit_train_batches=1)
    t.fit(m, datamodule=dm)
    t.save_checkpoint(tmp_path / "m.ckpt")
    return tmp_path / "m.ckpt", root


def test_cli_predict_with_tta_writes_the_averaged_probabilities(tmp_path) -> None:
    ckpt, root = _checkpoint(tmp_path)
    run = [sys.executable, "-m", "ftlight.cli", "predict", str(ckpt), str(root), "-k", "2"]
    # This checkout's ftlight, from any working directory.
    path = os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.run(
        [*run, "-o", "p.csv", "--tta", "flip+crops"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with (tmp_path / "p.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8
    # The same numbers as the views' probabilities averaged by hand.
    loaded = FineTuner.from_checkpoint(ckpt)
    transform = eval_transform(loaded.data_config)
    from ftlight.data import load_rgb

    x = torch.stack([transform(load_rgb(r["path"])) for r in rows])
    with torch.no_grad():
        views = _views_by_hand(x, "flip+crops")
        mean = torch.stack([loaded.probabilities(loaded(v)) for v in views]).mean(0)
        paths = [r["path"] for r in rows]
        plain = predict_probabilities(loaded, paths, tta="none")
        checkpoints = predict_probabilities(loaded, paths)  # the checkpoint's tta="flip"
        flip = torch.stack([loaded.probabilities(loaded(v)) for v in _views_by_hand(x, "flip")])
    assert loaded.hparams.tta == "flip" and loaded.hparams.mixup_alpha == 0.2
    assert torch.allclose(checkpoints, flip.mean(0), atol=1e-5)
    for row, p in zip(rows, mean, strict=True):
        assert float(row["prob_1"]) == pytest.approx(float(p.max()), abs=2e-6)
        assert row["pred_1"] == loaded.class_names[int(p.argmax())]
    assert not torch.allclose(plain, mean, atol=1e-4)


def test_cli_predict_bad_tta_is_a_usage_error_naming_value_and_choices(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        predict_main(["model.ckpt", "images/", "--tta", "mirror"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'mirror' (choose from 'none', 'flip', 'crops', 'flip+crops')" in err
