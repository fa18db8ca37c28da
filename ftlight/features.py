"""Cached backbone features for frozen phases: compute once, train the head many times.

With a frozen backbone (BatchNorm in inference mode) and deterministic transforms, the
backbone's output for an image never changes, so recomputing it every epoch is waste.
``FineTuner.forward`` accepts feature rows ``(B, num_features)`` and runs the head only.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from ftlight.backbone import Backbone
from ftlight.data import ImageDataModule


class CachingUnavailableError(RuntimeError):
    """Features cannot be cached for this set-up (say why)."""


@torch.no_grad()
def compute_features(
    backbone: Backbone,
    loader: DataLoader,
    *,
    device: str | torch.device | None = None,
    half: bool | None = None,
    progress: bool = True,
    desc: str = "features",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``backbone`` (eval mode) over ``loader``; return (features, labels) on the CPU.

    Features are stored in half precision on GPU runs (``half=None``: when on CUDA).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    half = device.type == "cuda" if half is None else half
    was_training = backbone.training
    backbone.eval().to(device)
    feats, labels = [], []
    try:
        for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
            x, y = batch[0].to(device, non_blocking=True), batch[1]
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                f = backbone(x)
            feats.append(f.half().cpu() if half else f.float().cpu())
            labels.append(torch.as_tensor(y))
    finally:
        backbone.train(was_training)
    return torch.cat(feats), torch.cat(labels)


class FeatureDataModule(L.LightningDataModule):
    """Cached ``(features, labels)`` per split, served as tensors (no decoding, no backbone)."""

    def __init__(
        self,
        splits: dict[str, tuple[torch.Tensor, torch.Tensor]],
        *,
        batch_size: int = 32,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.splits = splits
        self.batch_size = batch_size
        self.class_names = list(class_names) if class_names else None

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        feats, labels = self.splits[split]
        return DataLoader(
            TensorDataset(feats.float(), labels), batch_size=self.batch_size, shuffle=shuffle
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val", False) if "val" in self.splits else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)


def cache_features(
    datamodule: ImageDataModule,
    backbone: Backbone,
    *,
    splits: Sequence[str] = ("train", "val"),
    progress: bool = True,
) -> FeatureDataModule:
    """Compute ``backbone`` features once for ``splits`` of an image data module.

    Raises :class:`CachingUnavailableError` when training transforms are random
    (``augment=True``): caching would freeze one augmented view of each image.
    """
    if "train" in splits and datamodule.augment:
        raise CachingUnavailableError(
            "Feature caching is off: the training transforms are random (augment=True), so "
            "each epoch must see new crops. Pass augment=False to cache features."
        )
    trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
    if trainable:
        raise CachingUnavailableError(
            f"Feature caching needs a frozen backbone; {len(trainable)} parameters are "
            f"trainable (e.g. {trainable[:3]})."
        )
    datamodule.adopt_data_config(backbone.data_config)
    datamodule.setup()
    cached = {}
    for split in splits:
        if split in datamodule.datasets:
            loader = datamodule.loader(split, shuffle=False)
            cached[split] = compute_features(
                backbone, loader, progress=progress, desc=f"caching {split} features"
            )
    return FeatureDataModule(
        cached, batch_size=datamodule.batch_size, class_names=datamodule.class_names
    )
