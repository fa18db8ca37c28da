"""What real image folders contain: 16-bit, float and 1-bit files, EXIF orientation, hidden
entries, split folder names, corrupt and oversized files, extreme aspect ratios. Every file is
written for real in ``tmp_path``."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import read_file
from torchvision.transforms import v2 as T

import ftlight
from ftlight.data import CorruptImageError, ImageFileDataset, images_to_tensor, load_rgb
from ftlight.data.config import DataConfig
from ftlight.data.fast_decode import BatchDecoder, apply_orientation
from ftlight.data.transforms import eval_transform, interpolation_mode, split_transform
from tests.conftest import make_image_folder

CFG = DataConfig().with_image_size(32)


def folder_dm(root: Path, **kw) -> ftlight.ImageDataModule:
    kw = {"batch_size": 4, "num_workers": 0, "image_size": 32, **kw}
    return ftlight.ImageDataModule.from_folder(root, **kw)


def decoded_by_batch_decoder(paths: list[Path]) -> torch.Tensor:
    return BatchDecoder(CFG, augment=False, device="cpu")([read_file(str(p)) for p in paths])


def decoded_per_image(paths: list[Path]) -> torch.Tensor:
    return torch.stack([eval_transform(CFG)(load_rgb(p)) for p in paths])


# ---- corrupt files are skipped before the classes are checked ----------------------------


def test_a_class_whose_every_file_is_corrupt_is_an_error_after_skipping(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "imgs", classes=("red", "green", "blue"), per_class=3)
    for path in (root / "blue").iterdir():
        path.write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    dm = folder_dm(root, skip_corrupt=True)
    skipped = pytest.warns(UserWarning, match="Skipped 3 unreadable")
    with skipped, pytest.raises(ValueError, match=r"without any image: \['blue'\].*3 unreadable"):
        dm.setup()


def test_one_readable_class_left_after_skipping_is_an_error(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "imgs", per_class=3)
    for path in (root / "red").iterdir():
        path.write_bytes(path.read_bytes()[:40])  # truncated
    skipped = pytest.warns(UserWarning, match="Skipped 3 unreadable")
    with skipped, pytest.raises(ValueError, match=r"without any image: \['red'\]"):
        folder_dm(root, skip_corrupt=True).setup()


# ---- bit depth, not the image's maximum ----------------------------------------------------


DARK_16BIT = np.array([[0, 50, 100, 200], [120, 200, 10, 0]] * 4, dtype=np.uint16)  # of 65535


@pytest.mark.parametrize("fmt", ["png", "tiff", "ppm"])
def test_16bit_files_are_scaled_by_their_bit_depth(tmp_path: Path, fmt: str) -> None:
    ramp = np.linspace(0, 65535, 64).astype(np.uint16)[None].repeat(8, 0)
    for name, pixels in {"dark": DARK_16BIT, "ramp": ramp}.items():
        path = tmp_path / f"{name}.{fmt}"
        Image.fromarray(pixels).save(path)
        assert Image.open(path).mode in ("I;16", "I")  # Pillow opens 16-bit PPM as "I"
        got = np.asarray(load_rgb(path))
        expected = np.round(pixels / 65535.0 * 255.0).astype(np.uint8)
        assert np.array_equal(got, np.repeat(expected[..., None], 3, axis=-1)), name
    assert np.asarray(load_rgb(tmp_path / f"dark.{fmt}")).max() <= 1  # dark stays dark


def test_16bit_arrays_are_scaled_by_dtype_like_16bit_files(tmp_path: Path) -> None:
    Image.fromarray(DARK_16BIT).save(tmp_path / "dark.png")
    from_file = torch.from_numpy(np.array(load_rgb(tmp_path / "dark.png"))).permute(2, 0, 1)
    from_array = images_to_tensor(DARK_16BIT[None, None], channels="first")[0]
    assert from_array.max() < 1 / 255  # 200 of 65535, not 200 of 255
    assert torch.equal((from_array * 255).round().to(torch.uint8), from_file)
    with pytest.raises(ValueError, match=r"int32 are read as 0..255; these hold 0..65535"):
        images_to_tensor(np.array([[[[0, 65535]]]], dtype=np.int32), channels="first")


def test_16bit_and_1bit_files_give_the_same_pixels_on_every_decode_path(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    Image.fromarray(DARK_16BIT * 300).save(tmp_path / "a16.png")
    Image.fromarray(rng.random((40, 36)) > 0.5).save(tmp_path / "b1.png")
    Image.fromarray(rng.random((36, 40)) > 0.5).save(tmp_path / "c1.tiff", compression="group4")
    paths = sorted(tmp_path.iterdir())
    reference = decoded_per_image(paths)
    assert torch.allclose(decoded_by_batch_decoder(paths), reference, atol=1e-5)
    bits = np.asarray(load_rgb(tmp_path / "b1.png"))
    assert set(np.unique(bits)) == {0, 255}
    # the decoded-once cache reads the same pixels
    root = tmp_path / "folder"
    for cls, path in zip(("x", "y"), paths[:2], strict=True):
        (root / cls).mkdir(parents=True)
        (root / cls / path.name).write_bytes(path.read_bytes())
        (root / cls / f"copy_{path.name}").write_bytes(path.read_bytes())
    kw = {"augment": False, "val_split": 0.5, "data_config": CFG.to_dict()}
    plain = folder_dm(root, **kw).loader("val", shuffle=False)
    cached = folder_dm(root, decode_cache=str(tmp_path / "cache"), **kw).loader(
        "val", shuffle=False
    )
    assert torch.allclose(next(iter(plain))[0], next(iter(cached))[0], atol=1e-5)


def test_float_tiff_in_0_to_1_gives_its_grey_levels(tmp_path: Path) -> None:
    levels = np.linspace(0.0, 1.0, 32, dtype=np.float32)[None].repeat(4, 0)
    Image.fromarray(levels, mode="F").save(tmp_path / "f.tiff")
    got = np.asarray(load_rgb(tmp_path / "f.tiff"))[..., 0]
    assert np.array_equal(got, np.round(levels * 255).astype(np.uint8))
    Image.fromarray(levels * 1000, mode="F").save(tmp_path / "hdr.tiff")
    with pytest.raises(CorruptImageError, match=r"hdr\.tiff.*values in 0..1; .*0.0..1000.0"):
        load_rgb(tmp_path / "hdr.tiff")


# ---- EXIF orientation ----------------------------------------------------------------------


def asymmetric(h: int = 24, w: int = 40) -> np.ndarray:
    """Big coloured quadrants: any flip or rotation changes it."""
    pixels = np.zeros((h, w, 3), dtype=np.uint8)
    pixels[: h // 2, : w // 2] = (230, 20, 20)
    pixels[: h // 2, w // 2 :] = (20, 230, 20)
    pixels[h // 2 :, : w // 3] = (20, 20, 230)
    pixels[h // 2 :, w // 3 :] = (240, 240, 240)
    return pixels


def save_with_orientation(path: Path, pixels: np.ndarray, orientation: int, **kw) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif, **kw)


# What a viewer shows for each EXIF orientation of stored pixels (independent of Pillow).
UPRIGHT = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: np.rot90(a[:, ::-1], 1),  # mirrored, then turned 270 degrees clockwise
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a[:, ::-1], -1),  # mirrored, then turned 90 degrees clockwise
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int) -> None:
    stored = asymmetric()
    save_with_orientation(tmp_path / "p.png", stored, orientation)
    expected = UPRIGHT[orientation](stored)
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "p.png")), expected)
    as_tensor = apply_orientation(torch.from_numpy(stored).permute(2, 0, 1), orientation)
    assert np.array_equal(as_tensor.permute(1, 2, 0).numpy(), expected)


def test_exif_orientation_of_jpegs_on_the_batch_decoding_path(tmp_path: Path) -> None:
    stored, paths = asymmetric(48, 80), []
    for orientation in range(1, 9):
        paths.append(tmp_path / f"{orientation}.jpg")
        save_with_orientation(paths[-1], stored, orientation, quality=95)
    upright = [Image.fromarray(np.ascontiguousarray(UPRIGHT[o](stored))) for o in range(1, 9)]
    reference = torch.stack([eval_transform(CFG)(image) for image in upright])
    for decoded in decoded_by_batch_decoder(paths), decoded_per_image(paths):
        errors = (decoded - reference).abs().flatten(1).mean(1)
        assert errors.max() < 0.05, errors  # the upright pixels, up to JPEG compression


# ---- hidden entries --------------------------------------------------------------------------


def test_hidden_files_and_folders_are_never_samples_or_classes(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "imgs", per_class=4, splits=("train", "val"))
    good = (root / "train" / "red" / "0.png").read_bytes()
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / ".thumbnails").mkdir()
    (root / ".thumbnails" / "0.png").write_bytes(good)
    for split in ("train", "val"):
        (root / split / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
        (root / split / ".cache" / "0.png").parent.mkdir()
        (root / split / ".cache" / "0.png").write_bytes(good)
        (root / split / "red" / "._0.png").write_bytes(b"\0\5\26\7AppleDouble")  # macOS
        (root / split / "red" / ".thumbnails").mkdir()
        (root / split / "red" / ".thumbnails" / "0.png").write_bytes(good)
    dm = folder_dm(root)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about: hidden entries are not data
        dm.setup()
    assert dm.class_names == ["blue", "red"]
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 8, "val": 8}
    paths = [Path(p) for ds in dm.datasets.values() for p, _ in ds.samples]
    assert not any(part.startswith(".") for p in paths for part in p.relative_to(root).parts)


# ---- split folder names ------------------------------------------------------------------


@pytest.mark.parametrize("val_name", ["val", "valid", "validation"])
def test_validation_folder_names_are_recognised(tmp_path: Path, val_name: str) -> None:
    root = make_image_folder(tmp_path / "imgs", per_class=3, splits=("train", val_name, "test"))
    (root / "train" / "red" / "3.png").write_bytes((root / "train" / "red" / "0.png").read_bytes())
    dm = folder_dm(root)
    dm.setup()
    assert {k: len(v) for k, v in dm.datasets.items()} == {"train": 7, "val": 6, "test": 6}
    val_paths = {Path(p).parent.parent.name for p, _ in dm.datasets["val"].samples}
    assert val_paths == {val_name}


def test_unrecognised_folder_beside_train_is_named_in_a_warning(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "imgs", per_class=3, splits=("train", "dev"))
    dm = folder_dm(root)
    with pytest.warns(UserWarning, match=r"Ignored folder\(s\) \['dev'\] beside .*train"):
        dm.setup()
    assert set(dm.datasets) == {"train", "val"}  # val split from train, as before


def test_two_validation_folders_are_an_error(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "imgs", per_class=2, splits=("train", "val", "valid"))
    with pytest.raises(ValueError, match=r"several val folders \['val', 'valid'\]"):
        folder_dm(root).setup()


def test_class_folders_named_like_splits_get_the_reserved_name_explained(tmp_path: Path) -> None:
    flat = make_image_folder(tmp_path / "flat", classes=("car", "test", "boat"), per_class=2)
    with pytest.raises(ValueError, match=r"\['test'\] are split folder names.*rename"):
        folder_dm(flat).setup()
    vehicles = make_image_folder(tmp_path / "vehicles", classes=("train", "bus"), per_class=2)
    for path in (vehicles / "bus").iterdir():
        path.rename(vehicles / "train" / f"bus_{path.name}")  # train/ holds images itself
    (vehicles / "bus").rmdir()
    make_image_folder(vehicles, classes=("bus",), per_class=2)
    with pytest.raises(ValueError, match=r"'train' is a reserved folder name.*rename"):
        folder_dm(vehicles).setup()


# ---- pathological images -------------------------------------------------------------------


def png_claiming_size(path: Path, width: int, height: int) -> None:
    """A tiny PNG whose header claims ``width`` x ``height`` (a decompression bomb's header)."""
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = 8 + 8  # signature, then length + "IHDR"
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))


def test_decompression_bomb_is_named_and_skippable(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "imgs", per_class=3)
    png_claiming_size(root / "red" / "bomb.png", 100_000, 100_000)
    with pytest.raises(CorruptImageError, match=r"bomb\.png.*DecompressionBombError"):
        folder_dm(root).setup()
    dm = folder_dm(root, skip_corrupt=True)
    with pytest.warns(UserWarning, match=r"Skipped 1 unreadable.*bomb\.png"):
        dm.setup()
    assert sum(len(d) for d in dm.datasets.values()) == 6


def test_images_over_the_pixel_budget_are_named_and_skippable(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "imgs", per_class=3, size=40)
    Image.new("RGB", (100, 60), (200, 20, 20)).save(root / "red" / "big.png")
    with pytest.raises(CorruptImageError, match=r"big\.png: 100x60 = 6000 pixels exceeds .* 5000"):
        folder_dm(root, max_image_pixels=5000).setup()
    dm = folder_dm(root, max_image_pixels=5000, skip_corrupt=True)
    with pytest.warns(UserWarning, match=r"Skipped 1 .*big\.png"):
        dm.setup()
    assert len(dm.skipped_files) == 1
    with pytest.raises(CorruptImageError, match="pixel budget"):
        ImageFileDataset([(str(root / "red" / "big.png"), 0)], max_pixels=5000)[0]
    folder_dm(root).setup()  # the default budget is far above 6000 pixels


def largest_intermediate(transform: T.Compose, image: Image.Image) -> tuple[int, torch.Tensor]:
    largest, x = 0, image
    for step in transform.transforms:
        x = step(x)
        largest = max(largest, x.numel())
    return largest, x


def test_extreme_aspect_ratios_stay_small_in_the_eval_transform(tmp_path: Path) -> None:
    for size in [(30000, 1), (1, 30000), (20000, 3)]:
        Image.new("RGB", size, (10, 200, 30)).save(tmp_path / "strip.png")
        largest, out = largest_intermediate(eval_transform(CFG), load_rgb(tmp_path / "strip.png"))
        assert out.shape == (3, 32, 32)
        assert largest < 200_000, (size, largest)  # the old resize: 1.1M x 37 x 3 values
        colour = T.Compose(split_transform(CFG, augment=False)[0].transforms)(
            load_rgb(tmp_path / "strip.png")
        )
        assert (colour.flatten(1) == torch.tensor([[10], [200], [30]])).all()  # no padding
    big = eval_transform(DataConfig())(load_rgb(tmp_path / "strip.png"))  # 224 px: no gigabytes
    assert big.shape == (3, 224, 224)


@pytest.mark.parametrize("size", [(60, 40), (200, 60), (16 * 37, 37), (9, 144), (33, 33)])
def test_ordinary_aspect_ratios_keep_their_exact_pixels(size: tuple[int, int]) -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    interp = interpolation_mode(CFG.interpolation)
    resize = round(CFG.image_size / CFG.crop_pct)
    reference = T.Compose(
        [
            T.ToImage(),
            T.Resize(resize, interpolation=interp, antialias=True),
            T.CenterCrop(CFG.image_size),
        ]
    )(image)
    assert torch.equal(split_transform(CFG, augment=False)[0](image), reference)


# ---- batch of one with trainable BatchNorm ---------------------------------------------------


def test_a_batch_of_one_with_trainable_batchnorm_explains_the_fix(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "imgs", per_class=2)
    dm = folder_dm(root, batch_size=1, val_split=0.5)
    model = ftlight.FineTuner("resnet18", num_classes=2, image_size=32)  # every BN trains

    def trainer() -> L.Trainer:
        return L.Trainer(
            max_epochs=1,
            limit_train_batches=1,
            limit_val_batches=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
        )

    with pytest.raises(ValueError, match=r"batch of 1 image reaches the BatchNorm layer") as err:
        trainer().fit(model, datamodule=dm)
    message = str(err.value)
    assert "'backbone." in message and "BatchNorm2d" in message  # the layer
    assert "--data.batch_size" in message and "bn='inference'" in message  # the fix
    inference = ftlight.FineTuner("resnet18", num_classes=2, image_size=32, bn="inference")
    fixed = trainer()
    fixed.fit(inference, datamodule=dm)  # the fix it names works
    assert fixed.state.finished


def test_16bit_files_with_an_exif_orientation_are_upright_and_scaled(tmp_path: Path) -> None:
    # (TIFF is left out: Pillow 13 itself mis-decodes 16-bit TIFFs with an orientation tag.)
    stored = (np.arange(12).reshape(3, 4) * 5000).astype(np.uint16)
    save_with_orientation(tmp_path / "p.png", stored, 6)
    expected = np.round(np.rot90(stored, -1) / 65535 * 255).astype(np.uint8)
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "p.png"))[..., 0], expected)
