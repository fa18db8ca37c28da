"""Bad input to the engine: a clear error (received / expected / fix) or a counted skip.

Issue 6's list and where each item is tested (items covered elsewhere are not duplicated):

- corrupt or truncated image files: test_data.py::test_corrupt_files_error_lists_them_or_
  are_skipped (an error listing them, or ``skip_corrupt=True``: a warning and a count in
  ``skipped_files``); in ``ftlight predict``: test_unreadable_file_in_predict_inputs_names_it
- non-image files in class folders (ignored, counted in a warning), empty class folders, a
  single class: test_data.py::test_folder_problems_are_explained
- grayscale, RGBA, palette, 16-bit PNGs: test_data.py::test_odd_image_modes_become_rgb
- images smaller than the input size: test_images_smaller_than_the_input_size_are_upscaled
- labels out of range: test_data.py::test_array_inputs_are_checked,
  test_labels_out_of_range_in_a_batch_name_num_classes
- one-hot labels with a sparse loss and the reverse: compat/test_bad_input.py (the engine
  takes both forms: test_data.py::test_arrays_nhwc_and_nchw_one_hot_and_integer_labels_agree)
- a label count that disagrees with num_classes: test_label_count_that_disagrees_with_...
- channels-first arrays to compat and the reverse: compat/test_bad_input.py,
  test_channels_last_tensor_where_channels_first_expected
- NaN or Inf in inputs: test_data.py::test_array_inputs_are_checked (NaN),
  test_inf_inputs_are_rejected, compat/test_bad_input.py::test_nan_or_inf_in_inputs
- a loss that becomes NaN in training: test_nan_loss_stops_naming_epoch_and_batch_...,
  test_weights_that_become_non_finite_are_never_checkpointed,
  test_faults.py::test_cli_stops_on_nan_loss
- include_top=True with an input shape the top cannot take: compat/test_bad_input.py
- unknown backbone name: test_backbones.py::test_registry_rejects_duplicates_and_suggests_...
- weights file of another architecture: test_backbones.py::test_weights_of_another_arch...
- predicting on a folder whose classes differ: test_cli.py::test_predict_csv_and_class_name_...
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image

import ftlight
from ftlight.callbacks.guards import NonFiniteLossError, NonFiniteLossGuard
from ftlight.data import images_to_tensor
from tests.conftest import make_image_folder, quiet_trainer


def _trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    return quiet_trainer(tmp_path, **{"max_epochs": 1, **kwargs})


def test_images_smaller_than_the_input_size_are_upscaled(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "tiny", size=8, per_class=4)  # 8x8 px images
    dm = ftlight.ImageDataModule.from_folder(root, batch_size=4, num_workers=0, val_split=0.25)
    model = ftlight.FineTuner("resnet18", num_classes=2, image_size=32, freeze=True)
    trainer = _trainer(tmp_path, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(model, dm)  # set-up hands the 32 px preprocessing to the data
    for split in ("train", "val"):
        x, _ = next(iter(dm.loader(split)))
        assert x.shape[1:] == (3, 32, 32), split
    assert trainer.global_step == 1
    # Upscaled, not padded: the image's colour fills the whole frame.
    x, _ = next(iter(dm.loader("val", shuffle=False)))
    mean = torch.tensor(dm.data_config.mean)[:, None, None]
    std = torch.tensor(dm.data_config.std)[:, None, None]
    pixels = x[0] * std + mean
    corner, centre = float(pixels[:, :4, :4].mean()), float(pixels[:, 14:18, 14:18].mean())
    assert corner == pytest.approx(centre, abs=0.1)


def test_inf_inputs_are_rejected() -> None:
    x = np.zeros((4, 8, 8, 3), dtype=np.float32)
    x[2, 1, 1, 0] = np.inf
    x[3, 0, 0, 2] = -np.inf
    with pytest.raises(ValueError, match=r"NaN or Inf values \(2 images affected\)"):
        ftlight.ImageDataModule.from_arrays(x, [0, 1, 0, 1])
    with pytest.raises(ValueError, match="NaN or Inf"):
        images_to_tensor(torch.from_numpy(x))


def test_flat_pixel_rows_are_refused_with_the_reshape_to_make() -> None:
    # load_digits(return_X_y=True) gives (1797, 64) rows: 8x8 images flattened
    rows = np.zeros((4, 64), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"or 3-D \(N, H, W\).*shape=\(4, 64\); flat rows of 64 "
                       r"pixels\? x\.reshape\(-1, 8, 8\)"):  # fmt: skip
        ftlight.ImageDataModule.from_arrays(rows, [0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"shape=\(4, 60\)$"):  # no square: no hint
        images_to_tensor(np.zeros((4, 60)))


def test_label_count_that_disagrees_with_num_classes(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "imgs", per_class=4)  # classes: blue, red
    dm = ftlight.ImageDataModule.from_folder(root, batch_size=4, num_workers=0)
    model = ftlight.FineTuner("resnet18", num_classes=3, image_size=32, freeze=True)
    with pytest.raises(ValueError) as err:
        _trainer(tmp_path).fit(model, dm)
    message = str(err.value)
    assert "The data has 2 classes ['blue', 'red']" in message
    assert (
        "built for 3 (num_classes=3" in message and "num_classes=datamodule.num_classes" in message
    )
    # Binary: one logit for two classes is right, and trains.
    binary = ftlight.FineTuner("resnet18", num_classes=1, task="binary", image_size=32, freeze=True)
    trainer = _trainer(tmp_path, limit_train_batches=1, limit_val_batches=1)
    trainer.fit(binary, ftlight.ImageDataModule.from_folder(root, batch_size=4, num_workers=0))
    assert trainer.global_step == 1


def test_labels_out_of_range_in_a_batch_name_num_classes() -> None:
    model = ftlight.FineTuner("resnet18", num_classes=2, image_size=32)
    with pytest.raises(ValueError, match="Label 4 out of range for num_classes=2"):
        model.loss(torch.zeros(2, 2), torch.tensor([0, 4]))


def test_channels_last_tensor_where_channels_first_expected() -> None:
    """The engine takes NCHW tensors; an NHWC one is refused with both shapes named."""
    model = ftlight.FineTuner("resnet18", num_classes=2, image_size=32).eval()
    with pytest.raises(
        ValueError, match=r"\(batch, 3, height, width\). Received: shape=\(2, 32, 32, 3\)"
    ):
        model(torch.rand(2, 32, 32, 3))
    nhwc = np.zeros((4, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(
        ValueError, match=r"got 32 .* read as channels-first.*channels='first' or 'last'"
    ):
        images_to_tensor(nhwc, channels="first")
    assert images_to_tensor(nhwc).shape == (4, 3, 32, 32)  # 'auto' reads it right


def test_nan_loss_stops_naming_epoch_and_batch_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    L.seed_everything(0, verbose=False)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (32, 32, 32, 3)).astype(np.uint8)
    dm = ftlight.ImageDataModule.from_arrays(x, np.arange(32) % 2, batch_size=4, val_split=0.25)
    model = ftlight.FineTuner(
        "mobilenetv3_small_050", num_classes=2, optimizer="sgd", lr=1e6, image_size=32
    )
    ckpt = ModelCheckpoint(tmp_path / "ckpt", every_n_train_steps=1, save_last=True, save_top_k=0)
    trainer = _trainer(
        tmp_path, max_epochs=3, callbacks=[NonFiniteLossGuard(), ckpt], enable_checkpointing=True
    )
    with pytest.raises(NonFiniteLossError) as err:
        trainer.fit(model, dm)
    message = str(err.value)
    assert "The training loss became nan at epoch 0, batch 2" in message
    assert "global step 2" in message and "lower learning rate" in message
    last = tmp_path / "ckpt" / "last.ckpt"
    assert str(last) in message
    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 2  # the step before the NaN loss
    assert all(
        torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point()
    )
    restored = ftlight.FineTuner.from_checkpoint(last)  # loadable, to resume from
    assert all(torch.isfinite(p).all() for p in restored.parameters())


def test_weights_that_become_non_finite_are_never_checkpointed(tmp_path: Path) -> None:
    """A step that leaves an Inf weight (finite loss) is caught before the checkpoint."""

    class PoisonAtStep2(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step == 2:
                with torch.no_grad():
                    pl_module.head[-1].weight[0, 0] = float("inf")

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (16, 32, 32, 3)).astype(np.uint8)
    dm = ftlight.ImageDataModule.from_arrays(x, np.arange(16) % 2, batch_size=4, val_split=0.25)
    model = ftlight.FineTuner("resnet18", num_classes=2, image_size=32, freeze=True)
    ckpt = ModelCheckpoint(tmp_path / "ckpt", every_n_train_steps=1, save_last=True, save_top_k=0)
    trainer = _trainer(
        tmp_path,
        max_epochs=2,
        callbacks=[PoisonAtStep2(), NonFiniteLossGuard(), ckpt],
        enable_checkpointing=True,
    )
    with pytest.raises(
        NonFiniteLossError, match=r"Weights became NaN/Inf \(\['head.*epoch 0, batch 1"
    ):
        trainer.fit(model, dm)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["global_step"] == 1
    assert torch.isfinite(saved["state_dict"]["head.0.weight"]).all()


def test_unreadable_file_in_predict_inputs_names_it(tmp_path: Path) -> None:
    from ftlight.cli.predict import predict_probabilities

    good = tmp_path / "good.png"
    Image.new("RGB", (40, 40), (200, 10, 10)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    model = ftlight.FineTuner("resnet18", num_classes=2, image_size=32)
    with pytest.raises(ftlight.data.CorruptImageError, match=r"Cannot read image .*bad\.png"):
        predict_probabilities(model, [str(good), str(bad)])
