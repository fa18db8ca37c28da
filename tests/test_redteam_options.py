"""Red-team findings on ftlight's issue-14 options (mixup/TTA/EMA/lr-find/fine_tune) and data.

Each test states the right behaviour and is marked ``xfail(strict=True)`` while the library
gets it wrong, so a fix turns it into a pass (and the strict mark then asks for its removal).
Tiny real runs: a timm test model, 32 px, a few dozen images.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ftlight import FineTuner, ImageDataModule, fine_tune
from ftlight.cli.main import main as cli_main
from ftlight.tta import tta_probabilities
from tests.conftest import (
    make_image_folder,
    quiet_trainer,
    quiet_trainer_options,
    two_class_arrays_dm,
)


def _trainer(root: Path, epochs: int, **kw) -> L.Trainer:
    return quiet_trainer(root, max_epochs=epochs, **kw)


def test_tta_test_loss_is_the_models_loss_of_the_averaged_probabilities(tmp_path: Path) -> None:
    """The README's promise: with TTA the test loss is the NLL of the views' averaged
    probabilities, label smoothing applied as everywhere else (red team: it was documented as
    the plain NLL)."""
    dm = two_class_arrays_dm()
    L.seed_everything(0, verbose=False)
    model = FineTuner(
        "test_efficientnet", 2, None, image_size=32, lr=0.05, label_smoothing=0.3, tta="flip"
    )
    trainer = _trainer(tmp_path, 1)
    trainer.fit(model, dm)
    (scores,) = trainer.test(model, dataloaders=dm.val_dataloader(), verbose=False)
    model.eval()
    batches = list(dm.val_dataloader())
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    with torch.no_grad():
        probs = tta_probabilities(model, x, "flip")
    expected = F.cross_entropy(probs.log(), y, label_smoothing=0.3)
    assert scores["test_loss"] == pytest.approx(float(expected), abs=1e-5)
    assert float(expected) != pytest.approx(float(F.nll_loss(probs.log(), y)), abs=1e-3)


def _lr_find_args(root: Path) -> list[str]:
    make_image_folder(root / "imgs", per_class=4, size=32)
    return [
        "lr-find",
        "--model.backbone=test_efficientnet",
        "--model.image_size=32",
        f"--data.root={root / 'imgs'}",
        "--data.batch_size=4",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        f"--trainer.default_root_dir={root / 'run'}",
        "--trainer.max_epochs=10",
        "--lr_find.num_training_steps=15",
    ]


def test_cli_lr_find_bad_mode_is_one_error_line(tmp_path: Path, capsys) -> None:
    code = cli_main([*_lr_find_args(tmp_path), "--lr_find.mode=foo"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert err[-1].startswith("ftlight: error:") and "foo" in err[-1]


def test_cli_lr_find_refuses_lr_auto_with_backbone_lr_like_fit(tmp_path: Path, capsys) -> None:
    args = [*_lr_find_args(tmp_path), "--model.lr=auto", "--model.backbone_lr=1e-4"]
    code = cli_main(args)
    err = capsys.readouterr().err
    assert code == 1 and "backbone_lr" in err.strip().splitlines()[-1]


def test_float_images_in_an_unusual_range_are_not_silently_darkened() -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = digits.images[:32], digits.target[:32]  # float64, 0..16

    def first_batch(images: np.ndarray) -> torch.Tensor:
        dm = ImageDataModule.from_arrays(
            images, y, batch_size=32, val_split=0.0, augment=False, image_size=32
        )
        dm.setup("fit")
        torch.manual_seed(0)
        return next(iter(dm.train_dataloader()))[0]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        as_given = first_batch(x)
    told = [w for w in caught if "16" in str(w.message)]
    scaled = first_batch((x / 16 * 255).astype(np.uint8))  # what the user meant
    with pytest.raises(ValueError, match=r"0\.\.300"):
        first_batch(x / 16 * 300)
    # either the range is used (0..16 -> black..white) or the user is told about it
    assert told or float((as_given - scaled).abs().max()) < 0.05


def test_fine_tune_frozen_phase_keeps_the_backbone_still(tmp_path: Path) -> None:
    L.seed_everything(0, verbose=False)
    model = FineTuner("test_efficientnet", 2, None, image_size=32, freeze=False, lr=0.05)
    start = {k: v.detach().clone() for k, v in model.backbone.named_parameters()}

    class AfterFirstEpoch(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module) -> None:
            if trainer.current_epoch == 0:
                self.state = {
                    k: v.detach().clone() for k, v in pl_module.backbone.named_parameters()
                }

    seen = AfterFirstEpoch()
    fine_tune(
        model,
        two_class_arrays_dm(),
        epochs=1,
        freeze_epochs=1,
        unfreeze=1,
        callbacks=[seen],
        **quiet_trainer_options(tmp_path, num_sanity_val_steps=None),
    )
    moved = [k for k in start if not torch.equal(start[k], seen.state[k])]
    assert moved == []  # the frozen phase: head only (fastai's fine_tune freezes first)
    after = [k for k, v in model.backbone.named_parameters() if not torch.equal(start[k], v)]
    assert after, "the milestone unfroze nothing"
    assert len(after) < len(start)  # only the top group joined
