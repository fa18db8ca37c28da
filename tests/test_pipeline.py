"""Input pipeline: decoded-once cache, batched (GPU) decoding and its CPU fallback, CLI flag."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

import ftlight.data.datamodule
from ftlight import FineTuner, ImageDataModule
from ftlight.data.config import DataConfig
from ftlight.data.fast_decode import BatchDecoder, DecodedImages
from ftlight.data.transforms import eval_transform, split_transform
from tests.conftest import quiet_trainer


def jpeg_folder(root: Path, sizes=((60, 44), (40, 70), (90, 90)), per_class: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(("a", "b")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            w, h = sizes[i % len(sizes)]
            pixels = rng.integers(0, 255, (h, w, 3)).astype(np.uint8)
            pixels[..., c] = 250
            Image.fromarray(pixels).save(root / name / f"{i}.jpg", quality=90)
    return root


def folder_dm(root: Path, **kw) -> ImageDataModule:
    kw = {"batch_size": 4, "val_split": 0.25, "image_size": 32, "num_workers": 0, **kw}
    dm = ImageDataModule.from_folder(root, **kw)
    dm.data_config = DataConfig().with_image_size(32)
    return dm


def all_items(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_decode_cache_is_bit_identical_for_eval_transforms_and_reused(tmp_path) -> None:
    root = jpeg_folder(tmp_path / "imgs")
    plain = folder_dm(root, augment=False)
    cached = folder_dm(root, augment=False, decode_cache=str(tmp_path / "cache"))
    for split in ("train", "val"):
        x0, y0 = all_items(plain.loader(split, shuffle=False))
        x1, y1 = all_items(cached.loader(split, shuffle=False))
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    files = sorted((tmp_path / "cache").glob("*.u8"))
    assert len(files) == 2  # train and val
    stored = DecodedImages(np.memmap(files[0], np.uint8, mode="r"), np.zeros((0, 3)), files[0])
    assert stored.data.size % (3 * 32 * 32) == 0  # cropped to 32x32 once, not full size
    before = [f.stat().st_mtime_ns for f in files]
    again = folder_dm(root, augment=False, decode_cache=str(tmp_path / "cache"))
    all_items(again.loader("train", shuffle=False))
    assert [f.stat().st_mtime_ns for f in files] == before  # reused, not rebuilt
    assert sorted((tmp_path / "cache").glob("*.u8")) == files


def test_decode_cache_with_augmentation_shrinks_once_and_crops_every_epoch(tmp_path) -> None:
    root = jpeg_folder(tmp_path / "imgs", sizes=((200, 120), (90, 300)))
    dm = folder_dm(root, augment=True, decode_cache=str(tmp_path / "cache"))
    loader = dm.loader("train")
    x, _ = next(iter(loader))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    images = loader.dataset.images
    short = math.ceil(32 / math.sqrt(0.35))
    assert all(min(int(h), int(w)) == short for _, h, w in images.index)
    a, b = loader.dataset[0][0], loader.dataset[0][0]
    assert not torch.equal(a, b)  # random crops still differ per read


def test_batch_decoder_matches_the_per_image_cpu_path(tmp_path) -> None:
    root = jpeg_folder(tmp_path / "imgs")
    cfg = DataConfig().with_image_size(32)
    paths = sorted(root.rglob("*.jpg"))
    decoder = BatchDecoder(cfg, augment=False, device="cpu")
    from torchvision.io import read_file

    batch = decoder([read_file(str(p)) for p in paths])
    reference = torch.stack([eval_transform(cfg)(ftlight.data.load_rgb(p)) for p in paths])
    assert batch.shape == reference.shape == (len(paths), 3, 32, 32)
    assert (batch - reference).abs().mean() < 0.02  # same pixels up to JPEG decoder rounding
    train = BatchDecoder(cfg, augment=True, device="cpu")([read_file(str(p)) for p in paths])
    assert train.shape == reference.shape and not torch.allclose(train, batch)


def test_gpu_decoding_without_a_gpu_falls_back_with_a_clear_message(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    dm = folder_dm(jpeg_folder(tmp_path / "imgs"), augment=False, decode_device="cuda")
    with pytest.warns(UserWarning, match=r"no CUDA device is available.*decoding on the CPU"):
        loader = dm.loader("train", shuffle=False)
    assert dm.decode_device == "cpu"
    x, _ = next(iter(loader))
    assert x.shape == (4, 3, 32, 32)
    with pytest.raises(ValueError, match="decode_device must be 'cpu' or 'cuda'"):
        folder_dm(tmp_path / "imgs", decode_device="tpu").loader("train")


class BatchProbe(L.Callback):
    def __init__(self) -> None:
        self.shapes: list[tuple] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.shapes.append((tuple(batch[0].shape), batch[0].dtype, batch[1].dtype))


def test_encoded_batches_are_decoded_in_the_transfer_hook_during_fit(tmp_path, monkeypatch) -> None:
    # "cpu:0" takes the batched-decoding path (the one CUDA uses) on this machine.
    monkeypatch.setattr(ftlight.data.datamodule, "resolve_decode_device", lambda *a, **k: "cpu:0")
    dm = folder_dm(jpeg_folder(tmp_path / "imgs"), augment=True, decode_device="cuda")
    probe = BatchProbe()
    model = FineTuner("resnet18", 2, None, image_size=32, freeze=True, cache_features=False)
    quiet_trainer(tmp_path, max_epochs=1, callbacks=[probe], num_sanity_val_steps=None).fit(
        model, datamodule=dm
    )
    assert probe.shapes == [
        ((n, 3, 32, 32), torch.float32, torch.int64) for n in (4, 2)
    ]  # 6 training images, decoded per batch after the transfer
    assert set(dm.decoders) == {"train", "eval"}


def test_split_transform_recombines_to_the_eval_transform() -> None:
    cfg = DataConfig().with_image_size(32)
    once, every, geometry = split_transform(cfg, augment=False)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), np.uint8))
    assert torch.equal(every(once(image)), eval_transform(cfg)(image))
    assert geometry["mode"] == "eval" and once(image).dtype == torch.uint8


def test_cli_exposes_the_pipeline_switches(capsys) -> None:
    from ftlight.cli.main import main

    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = capsys.readouterr().out
    for flag in ("--data.decode_device", "--data.decode_cache", "--model.cache_features"):
        assert flag in out
    assert "--model.torch_compile" in out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_decoding_matches_cpu_decoding(tmp_path) -> None:
    root = jpeg_folder(tmp_path / "imgs")
    cpu = folder_dm(root, augment=False)
    gpu = folder_dm(root, augment=False, decode_device="cuda")
    loader = gpu.loader("val", shuffle=False)
    batch = gpu.transfer_batch_to_device(next(iter(loader)), torch.device("cuda"), 0)
    x_cpu, _ = next(iter(cpu.loader("val", shuffle=False)))
    assert batch[0].device.type == "cuda"
    assert (batch[0].cpu() - x_cpu).abs().mean() < 0.02
