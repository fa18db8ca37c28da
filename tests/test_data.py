"""ImageDataModule: folders, arrays, splits, odd image modes and corrupt files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ftlight
from ftlight.data import CorruptImageError, load_rgb, stratified_split
from tests.conftest import make_image_folder


def test_arrays_nhwc_and_nchw_one_hot_and_integer_labels_agree(colour_arrays) -> None:
    x, y = colour_arrays
    one_hot = np.eye(2)[y]
    a = ftlight.ImageDataModule.from_arrays(x, y, val_split=0.25, image_size=32)
    b = ftlight.ImageDataModule.from_arrays(
        x.transpose(0, 3, 1, 2), one_hot, val_split=0.25, image_size=32
    )
    xa, ya = next(iter(a.loader("val", shuffle=False)))
    xb, yb = next(iter(b.loader("val", shuffle=False)))
    assert xa.shape == (8, 3, 32, 32)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert a.class_names == ["0", "1"]


def test_array_inputs_are_checked() -> None:
    x = np.zeros((4, 8, 8, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="x has 4 images but y has 3 labels"):
        ftlight.ImageDataModule.from_arrays(x, [0, 1, 0])
    with pytest.raises(ValueError, match=r"Labels out of range: found 0..7, expected 0..2"):
        ftlight.ImageDataModule.from_arrays(x, [0, 1, 7, 2], num_classes=3)
    bad = x.copy()
    bad[1, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"NaN or Inf values \(1 images"):
        ftlight.ImageDataModule.from_arrays(bad, [0, 1, 0, 1])
    with pytest.raises(ValueError, match="4-D array"):
        ftlight.ImageDataModule.from_arrays(np.zeros((4, 8)), [0, 1, 0, 1])


def test_stratified_split_is_seeded_and_keeps_every_class() -> None:
    labels = [0] * 10 + [1] * 6 + [2] * 4
    keep, held = stratified_split(labels, 0.25, seed=3)
    assert stratified_split(labels, 0.25, seed=3) == (keep, held)
    assert stratified_split(labels, 0.25, seed=4) != (keep, held)
    assert sorted(keep + held) == list(range(20))
    assert {labels[i] for i in held} == {0, 1, 2}


def test_folder_with_split_subfolders(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "imgs", per_class=4, splits=("train", "val", "test"))
    dm = ftlight.ImageDataModule.from_folder(root, batch_size=2, num_workers=0, image_size=32)
    dm.setup()
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 8, "val": 8, "test": 8}
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (2, 3, 32, 32) and y.dtype == torch.long


def test_folder_val_and_test_split_from_one_tree(image_folder: Path) -> None:
    dm = ftlight.ImageDataModule(str(image_folder), val_split=0.25, test_split=0.25, num_workers=0)
    dm.setup()
    sizes = {k: len(v) for k, v in dm.datasets.items()}
    assert sizes == {"train": 8, "val": 4, "test": 4}
    paths = [p for ds in dm.datasets.values() for p, _ in ds.samples]
    assert len(set(paths)) == 16  # no image in two splits


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "LA"])
def test_odd_image_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    path = tmp_path / f"img_{mode.replace(';', '')}.png"
    if mode == "I;16":
        Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)).save(path)
    else:
        Image.new("RGB", (64, 64), (200, 10, 10)).convert(mode).save(path)
    image = load_rgb(path)
    assert image.mode == "RGB" and image.size == (64, 64)
    if mode == "I;16":
        assert np.asarray(image).max() > 200  # 16-bit range scaled, not clipped to black


def test_corrupt_files_error_lists_them_or_are_skipped(image_folder: Path) -> None:
    (image_folder / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    good = (image_folder / "blue" / "0.png").read_bytes()
    (image_folder / "blue" / "truncated.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(CorruptImageError, match="2 unreadable") as err:
        ftlight.ImageDataModule(str(image_folder), num_workers=0).setup()
    assert "broken.png" in str(err.value) and "truncated.png" in str(err.value)
    assert "skip_corrupt=True" in str(err.value)
    dm = ftlight.ImageDataModule(str(image_folder), num_workers=0, skip_corrupt=True)
    with pytest.warns(UserWarning, match="Skipped 2 unreadable"):
        dm.setup()
    assert sum(len(d) for d in dm.datasets.values()) == 16 and len(dm.skipped_files) == 2


def test_folder_problems_are_explained(tmp_path: Path, image_folder: Path) -> None:
    (image_folder / "red" / "notes.txt").write_text("not an image")
    dm = ftlight.ImageDataModule(str(image_folder), num_workers=0)
    with pytest.warns(UserWarning, match="Ignored 1 non-image files"):
        dm.setup()
    one = make_image_folder(tmp_path / "one", classes=("red",))
    with pytest.raises(ValueError, match=r"single class.*one sub-folder per class under"):
        ftlight.ImageDataModule(str(one), num_workers=0).setup()
    same = ftlight.ImageDataModule.from_arrays(np.zeros((4, 8, 8, 3), np.uint8), np.zeros(4, int))
    with pytest.raises(ValueError, match=r"single class.*labels with at least two values"):
        same.setup()
    no_test = ftlight.ImageDataModule(str(image_folder), num_workers=0)
    with pytest.raises(ValueError, match=r"No 'test' split.*--data\.test_split"):
        no_test.test_dataloader()
    arrays = ftlight.ImageDataModule.from_arrays(
        np.zeros((8, 8, 8, 3), np.uint8), np.arange(8) % 2, val_split=0.0
    )
    with pytest.raises(ValueError, match=r"No 'test' split.*from_arrays\(\.\.\., x_test="):
        arrays.test_dataloader()  # arrays: the hint names from_arrays' own arguments (nu8)
    (image_folder / "empty").mkdir()
    with pytest.raises(ValueError, match=r"without any image: \['empty'\]"):
        ftlight.ImageDataModule(str(image_folder), num_workers=0).setup()
    with pytest.raises(FileNotFoundError, match="Image folder not found"):
        ftlight.ImageDataModule(str(tmp_path / "missing")).setup()


def test_rgba_arrays_are_composited_on_white_like_rgba_files(tmp_path: Path) -> None:
    rgba = np.zeros((1, 8, 8, 4), dtype=np.uint8)  # transparent black (NHWC)
    rgba[0, :4, :, :] = (10, 200, 30, 255)  # opaque top half
    from ftlight.data import images_to_tensor

    from_array = images_to_tensor(rgba)[0].permute(1, 2, 0).numpy()
    Image.fromarray(rgba[0], mode="RGBA").save(tmp_path / "a.png")
    from_file = np.asarray(load_rgb(tmp_path / "a.png"))
    assert np.array_equal(from_array, from_file)
    assert from_array[7, 0].tolist() == [255, 255, 255]


def test_arrays_honour_test_split_and_drop_a_last_batch_of_one(colour_arrays) -> None:
    x, y = colour_arrays
    dm = ftlight.ImageDataModule.from_arrays(
        x[:29], y[:29], val_split=0.2, test_split=0.25, batch_size=4, image_size=32
    )
    dm.setup()
    sizes = {k: len(v) for k, v in dm.datasets.items()}
    assert set(sizes) == {"train", "val", "test"} and sum(sizes.values()) == 29
    train_batches = [len(b[1]) for b in dm.train_dataloader()]
    assert sizes["train"] % 4 == 1  # 17: a last batch of one, which is dropped
    assert train_batches == [4, 4, 4, 4]
