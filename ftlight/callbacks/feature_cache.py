"""Cached backbone features for frozen phases: compute once, train the head many times.

With a frozen backbone (BatchNorm in inference mode, no active dropout) and deterministic
transforms, the backbone's output for an image never changes, so recomputing it every epoch
is waste. ``FineTuner.forward`` accepts feature rows ``(B, num_features)`` and runs the head
only.

Two ways to use it:

* :func:`cache_features` turns an :class:`ImageDataModule` into a :class:`FeatureDataModule`
  (explicit, outside the Trainer).
* :class:`FeatureCache`, a callback that ``FineTuner(cache_features=True)`` adds to every
  ``Trainer.fit``. It wraps the fit loop's train and validation *data sources*: for each
  epoch in which the feature extractor is static it serves loaders of cached feature rows
  (computed once, in order, in eval mode, under the Trainer's precision); otherwise the
  original image loaders. Before every epoch it re-decides: when a backbone group unfreezes
  (``set_freeze`` between fits, or a :class:`~ftlight.callbacks.StagedUnfreeze` milestone) the
  cache is dropped and the image loaders come back from the next epoch on. Cached rows are
  keyed by dataset and by the extractor's weights (tensor version counters), so a changed
  backbone is never served stale features.

Storage: float32 in CPU memory; half precision on the GPU when training on CUDA; a
memory-mapped file (``cache_dir``, default a temporary folder) when the rows exceed
``max_memory_bytes``.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
)
from tqdm.auto import tqdm

from ftlight.data import ImageDataModule
from ftlight.data.sampling import EpochSampler, ResumableDataLoader
from ftlight.models.backbone import Backbone


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


# ---- safety checks ----------------------------------------------------------------------

log = logging.getLogger(__name__)

_RANDOM_TRANSFORMS = (
    "AugMix",
    "AutoAugment",
    "ColorJitter",
    "ElasticTransform",
    "GaussianBlur",
    "GaussianNoise",
    "RandAugment",
    "TrivialAugmentWide",
    "JPEG",
)


def random_transforms(transform: Any) -> list[str]:
    """Names of random transforms inside ``transform`` (torchvision v1/v2, nested Compose)."""
    if transform is None:
        return []
    found = []
    name = type(transform).__name__
    if name.startswith("Random") or name in _RANDOM_TRANSFORMS:
        found.append(name)
    for attr in ("transforms", "transform"):
        inner = getattr(transform, attr, None)
        if isinstance(inner, (list, tuple)):
            for t in inner:
                found += random_transforms(t)
        elif inner is not None and inner is not transform and callable(inner):
            found += random_transforms(inner)
    return found


def _base_dataset(dataset: Any) -> Any:
    while hasattr(dataset, "dataset") and isinstance(dataset.dataset, Dataset):
        dataset = dataset.dataset  # torch Subset and friends
    return dataset


def loader_randomness(loader: DataLoader) -> str | None:
    """Why the samples of ``loader`` differ between epochs (``None``: they do not)."""
    dataset = loader.dataset
    base = _base_dataset(dataset)
    names = random_transforms(getattr(base, "transform", None))
    if names:
        return f"the training transforms are random ({', '.join(dict.fromkeys(names))})"
    if isinstance(dataset, IterableDataset):
        return "the training data is an IterableDataset (no fixed samples to key a cache by)"
    try:  # an unknown callable transform: draw the first sample twice
        index = [0] if loader.batch_size is None else 0
        a, b = dataset[index][0], dataset[index][0]
    except Exception:  # not indexable that way: trust the name check
        return None
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and not torch.equal(a, b):
        return "the training samples change between reads (a random transform)"
    return None


def stochastic_modules(module: nn.Module) -> list[str]:
    """Modules that make ``module``'s output random or update state *in its current mode*:
    BatchNorm in training mode (batch statistics) and active dropout / drop-path."""
    out = []
    for name, m in module.named_modules():
        if not m.training:
            continue
        drop = float(getattr(m, "drop_prob", getattr(m, "p", 0.0)) or 0.0)
        is_dropout = isinstance(m, nn.modules.dropout._DropoutNd) or type(m).__name__ in (
            "DropPath",
            "StochasticDepth",
        )
        if isinstance(m, _BatchNorm) or (is_dropout and drop > 0):
            out.append(name)
    return out


def _save_modes(module: nn.Module) -> dict[nn.Module, bool]:
    return {m: m.training for m in module.modules()}


def _restore_modes(modes: dict[nn.Module, bool]) -> None:
    for m, training in modes.items():
        m.training = training


def weights_version(module: nn.Module) -> tuple[tuple[int, int], ...]:
    """Changes whenever a parameter or buffer of ``module`` is replaced or updated in place."""
    tensors = [*module.parameters(), *module.buffers()]
    return tuple((t.data_ptr(), t._version) for t in tensors)


# ---- cached rows served as a dataset -----------------------------------------------------


def _identity(batch: Any) -> Any:
    return batch


class FeatureRows(Dataset):
    """Rows of cached tensors (features first, then labels etc.; ``None`` stays ``None``).

    ``__getitems__`` gathers a whole batch at once (one index op per tensor, also for
    GPU-resident or memory-mapped rows); serve it with ``collate_fn=_identity``.
    """

    def __init__(self, features: torch.Tensor, *extras: torch.Tensor | None) -> None:
        self.tensors = (features, *extras)

    def __len__(self) -> int:
        return len(self.tensors[0])

    def _take(self, index: Any) -> tuple:
        out = []
        for i, t in enumerate(self.tensors):
            if t is None:
                out.append(None)
                continue
            rows = t[index.to(t.device) if isinstance(index, torch.Tensor) else index]
            out.append(rows.float() if i == 0 else rows)
        return tuple(out)

    def __getitem__(self, i: int) -> tuple:
        return self._take(i)

    def __getitems__(self, indices: list[int]) -> tuple:
        return self._take(torch.as_tensor(indices, dtype=torch.long))


def _batching(loader: DataLoader) -> tuple[int, bool, bool]:
    """(batch size, shuffled, drop_last) of a map-style loader, auto- or sampler-batched."""
    if loader.batch_size is not None:
        shuffled = isinstance(loader.sampler, RandomSampler) or bool(
            getattr(loader.sampler, "shuffle", False)
        )
        return loader.batch_size, shuffled, loader.drop_last
    sampler = loader.sampler
    if isinstance(sampler, BatchSampler):
        return sampler.batch_size, isinstance(sampler.sampler, RandomSampler), sampler.drop_last
    raise CachingUnavailableError(
        "Feature caching needs a map-style DataLoader with a batch size or a BatchSampler. "
        f"Received: batch_size=None, sampler={type(sampler).__name__}"
    )


def _in_order(loader: DataLoader) -> DataLoader:
    """The same samples and collation as ``loader``, in dataset order, no shuffling."""
    batch_size, _, _ = _batching(loader)
    common = {"collate_fn": loader.collate_fn, "num_workers": loader.num_workers}
    if loader.num_workers:
        common["persistent_workers"] = False
    if loader.batch_size is not None:
        return DataLoader(loader.dataset, batch_size=batch_size, shuffle=False, **common)
    order = BatchSampler(SequentialSampler(range(len(loader.dataset))), batch_size, False)
    return DataLoader(loader.dataset, batch_size=None, sampler=order, **common)


# ---- the callback -------------------------------------------------------------------------


class _CachedSource:
    """Stands in for a fit-loop data source; serves cached feature loaders when allowed."""

    def __init__(self, source: Any, cache: FeatureCache, split: str) -> None:
        self.source, self.cache, self.split = source, cache, split

    def dataloader(self) -> Any:
        return self.cache._serve(self.source, self.split)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.source, name)


class FeatureCache(Callback):
    """Train the head on cached backbone features while the backbone is static.

    Added by ``FineTuner(cache_features=...)``; works with any LightningModule that has a
    ``feature_extractor`` (an ``nn.Module``), an ``extract_features(x)`` method and a
    ``forward`` that accepts the extracted rows in place of the inputs.

    Args:
        mode: ``True``: cache whenever it is safe, warn when it is not (and why);
            ``"auto"``: cache whenever it is safe, silently (reasons are logged);
            ``None``: automatic, only in the all-gated first phase of a
            :class:`~ftlight.callbacks.staged.StagedUnfreeze` run (reasons are logged, not warned);
            ``False``: never.

    The caching pass leaves the global RNG state as it found it, so shuffling and dropout
    draw the same numbers as in an uncached run.
        half: store rows in float16 (``None``: when training on CUDA).
        cache_dir: folder for memory-mapped rows (``None``: a temporary folder).
        max_memory_bytes: above this size a split's rows are memory-mapped on disk.
    """

    def __init__(
        self,
        mode: bool | Literal["auto"] | None = True,
        *,
        half: bool | None = None,
        cache_dir: str | None = None,
        max_memory_bytes: int = 2 * 1024**3,
    ) -> None:
        self.mode = mode
        self.half = half
        self.cache_dir = cache_dir
        self.max_memory_bytes = max_memory_bytes
        self.active = False
        self.reason: str | None = None
        self.epochs_cached: list[int] = []
        self._decided: tuple[int, bool] | None = None
        self._warned: set[str] = set()
        self._unavailable: dict[str, tuple[Any, str]] = {}  # split -> (weights version, why)
        self._wrapped: list[tuple[Any, Any]] = []
        self._tmp: tempfile.TemporaryDirectory | None = None

    # ---- wiring ------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.mode is False:
            return
        fit_loop = trainer.fit_loop
        loops = [(fit_loop, "train"), (fit_loop.epoch_loop.val_loop, "val")]
        for loop, split in loops:
            source = getattr(loop, "_data_source", None)
            if source is None or not hasattr(source, "dataloader"):
                self._off(f"this Lightning version has no fit-loop data source ({split})")
                return
        for loop, split in loops:
            if not isinstance(loop._data_source, _CachedSource):
                self._wrapped.append((loop, loop._data_source))
                loop._data_source = _CachedSource(loop._data_source, self, split)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for loop, source in self._wrapped:
            loop._data_source = source
        self._wrapped = []
        self._decided = None
        self._unavailable = {}

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.active:
            self.epochs_cached.append(trainer.current_epoch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._wrapped:
            return
        upcoming = trainer.current_epoch + 1
        allowed, reason = self._decide(trainer, pl_module, upcoming)
        if allowed != self.active:
            # Ask the fit loop for new loaders at the next epoch (cached <-> images).
            for loop, _ in self._wrapped:
                loop._combined_loader = None
            if not allowed:
                log.info("Feature cache invalidated before epoch %d: %s", upcoming, reason)
                _feature_store(pl_module).clear()

    # ---- decisions ---------------------------------------------------------------------
    def _off(self, reason: str) -> None:
        self.active, self.reason = False, reason
        self._say(f"Feature caching is off: {reason}.")

    def _say(self, message: str) -> None:
        if self.mode is True and message not in self._warned:
            self._warned.add(message)
            warnings.warn(message, stacklevel=3)
        log.info(message)

    def _decide(
        self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int
    ) -> tuple[bool, str | None]:
        extractor = getattr(pl_module, "feature_extractor", None)
        if not isinstance(extractor, nn.Module) or not hasattr(pl_module, "extract_features"):
            return False, f"{type(pl_module).__name__} has no feature_extractor"
        staged = _staged_callback(trainer)
        if self.mode is None and staged is None:
            return False, "automatic caching applies to staged runs only (pass True to force)"
        trainable = {n for n, p in extractor.named_parameters() if p.requires_grad}
        gated = _gated_params(staged, pl_module, epoch) if staged is not None else set()
        moving = sorted(trainable - gated)
        if moving:
            return False, (
                f"the backbone trains in epoch {epoch} ({len(moving)} trainable parameters, "
                f"e.g. {moving[:2]})"
            )
        if trainable and trainer.world_size > 1:
            return False, "gated backbone groups under a distributed strategy expect gradients"
        modes = _save_modes(pl_module)
        try:
            pl_module.train()
            stochastic = stochastic_modules(extractor)
        finally:
            _restore_modes(modes)
        if stochastic:
            return False, (
                "the backbone is not deterministic in training mode (BatchNorm with batch "
                f"statistics or active dropout: {stochastic[:3]}); use bn='frozen'"
            )
        known = self._unavailable.get("train")
        if known is not None and known[0] == weights_version(extractor):
            return False, known[1]
        return True, None

    def _decide_epoch(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        # The epoch about to run; ``current_epoch`` lags by one when resuming from a
        # checkpoint written at an epoch end (the loop counts it complete only later).
        epoch = trainer.fit_loop.epoch_progress.current.processed
        if self._decided is not None and self._decided[0] == epoch:
            return self._decided[1]
        allowed, reason = self._decide(trainer, pl_module, epoch)
        if allowed:
            train_source = next(s for loop, s in self._wrapped if loop is trainer.fit_loop)
            loader = train_source.dataloader()
            if isinstance(loader, DataLoader):
                reason = loader_randomness(loader)
                datamodule = getattr(train_source, "instance", None)
                if getattr(datamodule, "augment", False) and reason is None:
                    reason = "the data module augments training images (augment=True)"
                if reason:
                    reason += "; each epoch must see new samples (pass augment=False to cache)"
            else:
                reason = f"the training data is a {type(loader).__name__}, not one DataLoader"
            allowed = reason is None
        if not allowed:
            self._off(str(reason))
        self.active = allowed
        self._decided = (epoch, allowed)
        return allowed

    # ---- serving -------------------------------------------------------------------------
    def _serve(self, source: Any, split: str) -> Any:
        trainer = self._trainer_of(source)
        pl_module = trainer.lightning_module
        if not self._decide_epoch(trainer, pl_module):
            return source.dataloader()
        loaders = source.dataloader()
        single = isinstance(loaders, DataLoader)
        items = [loaders] if single else loaders
        if not isinstance(items, (list, tuple)) or not all(
            isinstance(dl, DataLoader) for dl in items
        ):
            return loaders
        version = weights_version(pl_module.feature_extractor)
        known = self._unavailable.get(split)
        if known is not None and known[0] == version:  # failed before for these weights
            return loaders
        try:
            cached = [self._cached_loader(trainer, pl_module, dl, split) for dl in items]
        except CachingUnavailableError as err:
            # Remembered, so later epochs neither retry nor reload loaders for nothing.
            self._unavailable[split] = (version, str(err))
            if split == "train":
                self._off(str(err))
                self._decided = (trainer.fit_loop.epoch_progress.current.processed, False)
            else:  # the head still trains on cached rows; this split runs on its inputs
                self._say(f"Feature caching is off for the {split} data: {err}.")
            return loaders
        return cached[0] if single else cached

    def _trainer_of(self, source: Any) -> L.Trainer:
        for loop, _ in self._wrapped:
            if loop._data_source.source is source:
                return loop.trainer
        raise RuntimeError("FeatureCache: unknown data source")

    def _cached_loader(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loader: DataLoader, split: str
    ) -> DataLoader:
        batch_size, shuffle, drop_last = _batching(loader)
        if isinstance(loader.dataset, IterableDataset):
            raise CachingUnavailableError("the data is an IterableDataset")
        extractor = pl_module.feature_extractor
        key = (split, id(loader.dataset), type(loader.dataset).__name__, len(loader.dataset))
        store = _feature_store(pl_module)
        version = weights_version(extractor)
        hit = store.get(key)
        if hit is None or hit[0] != version:
            store[key] = (version, self._compute(trainer, pl_module, loader, split))
        rows = store[key][1]
        shuffle = shuffle and split == "train"
        if isinstance(loader.sampler, EpochSampler):  # same seeded order as the image loader
            sampler = EpochSampler(len(rows), shuffle=shuffle, seed=loader.sampler.seed)
            return ResumableDataLoader(
                rows,
                batch_size=batch_size,
                sampler=sampler,
                drop_last=drop_last,
                collate_fn=_identity,
            )
        return DataLoader(
            rows, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last, collate_fn=_identity
        )

    @torch.no_grad()
    def _compute(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loader: DataLoader, split: str
    ) -> FeatureRows:
        device = pl_module.device
        half = device.type == "cuda" if self.half is None else self.half
        dtype = torch.float16 if half else torch.float32
        total = len(loader.dataset)
        feats: torch.Tensor | None = None
        extras: list[list[Any]] = []
        modes = _save_modes(pl_module)
        pl_module.eval()
        start = 0
        # Iterating loaders draws seeds from the global RNG: keep training's draws as they are.
        rng_devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=rng_devices):
            try:
                for batch in _in_order(loader):
                    # Lightning's transfer hooks: device moves and GPU decoding, as in training.
                    batch = pl_module._apply_batch_transfer_handler(batch, device)
                    items = list(batch) if isinstance(batch, (list, tuple)) else [batch]
                    x = items[0]
                    with trainer.precision_plugin.forward_context():
                        f = pl_module.extract_features(x)
                    if feats is None:
                        feats = self._allocate(total, f.shape[1:], dtype, device, split)
                    feats[start : start + len(f)] = f.to(feats.device, dtype)
                    start += len(f)
                    for i, item in enumerate(items[1:]):
                        if len(extras) <= i:
                            extras.append([])
                        extras[i].append(item)
            finally:
                _restore_modes(modes)
        if feats is None:
            raise CachingUnavailableError(f"the {split} loader yielded no batches")
        columns = [
            None if any(v is None for v in col) else torch.cat([torch.as_tensor(v) for v in col])
            for col in extras
        ]
        columns = [None if c is None else c.to(feats.device) for c in columns]
        log.info("Cached %d %s feature rows %s (%s)", start, split, tuple(feats.shape), dtype)
        return FeatureRows(feats[:start], *columns)

    def _allocate(
        self,
        total: int,
        shape: torch.Size,
        dtype: torch.dtype,
        device: torch.device,
        split: str,
    ) -> torch.Tensor:
        size = (total, *shape)
        nbytes = int(np.prod(size)) * torch.empty((), dtype=dtype).element_size()
        if device.type == "cuda" and nbytes <= self.max_memory_bytes:
            return torch.empty(size, dtype=dtype, device=device)
        if nbytes <= self.max_memory_bytes:
            return torch.empty(size, dtype=dtype)
        folder = self.cache_dir
        if folder is None:
            self._tmp = self._tmp or tempfile.TemporaryDirectory(prefix="ftlight-features-")
            folder = self._tmp.name
        bits = 16 if dtype == torch.float16 else 32
        path = f"{folder}/{split}-{total}x{'x'.join(map(str, shape))}-f{bits}.npy"
        array = np.lib.format.open_memmap(
            path, mode="w+", dtype=np.float16 if dtype == torch.float16 else np.float32, shape=size
        )
        log.info("Memory-mapping %s feature rows (%.1f GB) at %s", split, nbytes / 1e9, path)
        return torch.from_numpy(array)


def _feature_store(pl_module: nn.Module) -> dict[Any, Any]:
    store = pl_module.__dict__.get("_feature_cache")
    if store is None:
        store = {}
        pl_module.__dict__["_feature_cache"] = store
    return store


def _staged_callback(trainer: L.Trainer) -> Any:
    from ftlight.callbacks.staged import StagedUnfreeze

    return next((cb for cb in trainer.callbacks if isinstance(cb, StagedUnfreeze)), None)


def _gated_params(staged: Any, pl_module: nn.Module, epoch: int) -> set[str]:
    """Extractor parameter names whose StagedUnfreeze milestone is after ``epoch``."""
    backbone = getattr(pl_module, "backbone", None)
    if backbone is None or not staged.milestones:
        return set()
    milestone_of = staged.group_milestone or staged.resolve(pl_module)
    out = set()
    for group in backbone.layer_groups:
        index = milestone_of.get(group.name)
        if index is not None and not staged.reached(index, epoch):
            out.update(f"model.{n}" for n in group.param_names)
    return out
