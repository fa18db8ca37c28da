"""Cached backbone features for frozen phases: compute once, train the head many times.

With a frozen backbone (BatchNorm in inference mode, no active dropout) and deterministic
transforms, the backbone's output for an image never changes, so recomputing it every epoch
is waste. Cached rows reach the model as a :class:`FeatureBatch`, a marker that tells
``FineTuner.forward`` (and compat's module) to run the head only: the type decides, never
the shape of a tensor.

One extractor, :func:`compute_features`, computes the rows for both ways of using them:

* :func:`cache_features` turns an :class:`ImageDataModule` into a :class:`FeatureDataModule`
  (explicit, outside the Trainer).
* :class:`FeatureCache`, a callback that ``FineTuner(cache_features=...)`` adds to every
  ``Trainer.fit``. It works through public Lightning hooks only: it wraps the data module's
  ``train_dataloader``/``val_dataloader`` (which Lightning calls by name) and asks the Trainer
  to reload them (``reload_dataloaders_every_n_epochs``) when cached rows must give way to
  images. For each epoch in which the feature extractor is static it serves loaders of
  cached rows (computed once, in order, in eval mode, under the Trainer's precision, moved by
  the module's public batch-transfer hooks); otherwise the data module's own loaders. When a
  backbone group unfreezes (a :class:`~ftlight.callbacks.StagedUnfreeze` milestone, or
  ``set_freeze`` between fits) the cache is dropped and the image loaders come back. Rows are
  keyed by dataset and by the extractor's weights (tensor version counters), so a changed
  backbone is never served stale features, and the callback raises if Lightning ever keeps
  iterating cached rows for an epoch in which the backbone trains.

Storage: float32 in CPU memory; half precision on the GPU when training on CUDA; a
memory-mapped file (``cache_dir``, default a temporary folder) when the rows exceed
``max_memory_bytes``. The rows live on the callback and are released when ``fit`` ends.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import tempfile
from collections.abc import Callable, Sequence
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import move_data_to_device, rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
)
from tqdm.auto import tqdm

from ftlight.callbacks.staged import StagedUnfreeze
from ftlight.data import ImageDataModule
from ftlight.data.sampling import EpochSampler, ResumableDataLoader
from ftlight.models.backbone import Backbone


class CachingUnavailableError(RuntimeError):
    """Features cannot be cached for this set-up (say why)."""


class FeatureBatch:
    """Extractor outputs standing in for a batch of inputs: the model runs its head only.

    Moves like a tensor (``.to``), so Lightning's batch transfer and ``move_data_to_device``
    carry it to the device unchanged in type.
    """

    __slots__ = ("features",)

    def __init__(self, features: torch.Tensor) -> None:
        self.features = features

    def to(self, *args: Any, **kwargs: Any) -> FeatureBatch:
        return FeatureBatch(self.features.to(*args, **kwargs))

    def __len__(self) -> int:
        return len(self.features)

    def __repr__(self) -> str:
        return f"FeatureBatch(shape={tuple(self.features.shape)}, dtype={self.features.dtype})"


# ---- cached rows served as a dataset -----------------------------------------------------


def _identity(batch: Any) -> Any:
    return batch


class FeatureRows(Dataset):
    """Rows of cached tensors (features first, then labels etc.; ``None`` stays ``None``).

    Items come out as ``(FeatureBatch(features), *extras)``. ``__getitems__`` gathers a whole
    batch at once (one index op per tensor, also for GPU-resident or memory-mapped rows);
    serve it with ``collate_fn=_identity``.
    """

    def __init__(self, features: torch.Tensor, *extras: torch.Tensor | None) -> None:
        self.tensors = (features, *extras)

    def __len__(self) -> int:
        return len(self.tensors[0])

    def _take(self, index: Any) -> tuple:
        out: list[Any] = []
        for i, t in enumerate(self.tensors):
            if t is None:
                out.append(None)
                continue
            rows = t[index.to(t.device) if isinstance(index, torch.Tensor) else index]
            out.append(FeatureBatch(rows.float()) if i == 0 else rows)
        return tuple(out)

    def __getitem__(self, i: int) -> tuple:
        return self._take(i)

    def __getitems__(self, indices: list[int]) -> tuple:
        return self._take(torch.as_tensor(indices, dtype=torch.long))


# ---- the one feature extractor ------------------------------------------------------------


def _autocast_on_cuda(device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    return lambda: torch.autocast(device.type, enabled=device.type == "cuda")


@torch.no_grad()
def compute_features(
    module: nn.Module,
    loader: DataLoader,
    *,
    extract: Callable[[Any], torch.Tensor] | None = None,
    device: str | torch.device | None = None,
    transfer: Callable[[Any, torch.device], Any] | None = None,
    precision: Callable[[], contextlib.AbstractContextManager] | None = None,
    half: bool | None = None,
    allocate: Callable[[tuple[int, ...], torch.dtype], torch.Tensor] | None = None,
    progress: bool = False,
    desc: str = "features",
) -> FeatureRows:
    """Run ``extract`` (default ``module``) over ``loader`` in eval mode; cached rows.

    Every cache in ftlight computes its rows here. Batches are ``x`` or ``(x, *extras)``;
    the rows keep the extras (labels, sample weights) in loader order. ``module``'s train/eval
    modes and the global RNG state are left as they were found, so training afterwards draws
    the same numbers as an uncached run.

    Args:
        device: where the batches go (default: CUDA when available); ``module`` must be there.
        transfer: ``(batch, device) -> batch`` (default ``move_data_to_device``); a
            LightningModule's public batch-transfer hooks go here.
        precision: context for the forward pass (default: autocast on CUDA); a Trainer's
            ``precision_plugin.forward_context`` goes here.
        half: store features as float16 (default: when computing on CUDA).
        allocate: ``(shape, dtype) -> tensor`` for the feature rows (default: CPU memory).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.float16 if (device.type == "cuda" if half is None else half) else torch.float32
    extract = extract or module
    transfer = transfer or move_data_to_device
    precision = precision or _autocast_on_cuda(device)
    allocate = allocate or (lambda shape, dt: torch.empty(shape, dtype=dt))
    total = len(loader.dataset)
    feats: torch.Tensor | None = None
    extras: list[list[Any]] = []
    start = 0
    modes = _save_modes(module)
    module.eval()
    # Iterating loaders draws seeds from the global RNG: keep training's draws as they are.
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        try:
            for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
                batch = transfer(batch, device)
                items = list(batch) if isinstance(batch, (list, tuple)) else [batch]
                with precision():
                    f = extract(items[0])
                if feats is None:
                    feats = allocate((total, *f.shape[1:]), dtype)
                feats[start : start + len(f)] = f.to(feats.device, dtype)
                start += len(f)
                for i, item in enumerate(items[1:]):
                    if len(extras) <= i:
                        extras.append([])
                    extras[i].append(item)
        finally:
            _restore_modes(modes)
    if feats is None:
        raise CachingUnavailableError(f"the {desc} loader yielded no batches")
    columns = [
        None
        if any(v is None for v in col)
        else torch.cat([torch.as_tensor(v) for v in col]).to(feats.device)
        for col in extras
    ]
    return FeatureRows(feats[:start], *columns)


class FeatureDataModule(L.LightningDataModule):
    """Cached ``(FeatureBatch, labels)`` per split, served as rows (no decoding, no backbone)."""

    def __init__(
        self,
        splits: dict[str, tuple[FeatureBatch, torch.Tensor]],
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
            FeatureRows(feats.features, labels),
            batch_size=self.batch_size,
            shuffle=shuffle,
            collate_fn=_identity,
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
    (``augment=True``, an ``auto_augment`` policy): caching would freeze one augmented view
    of each image.
    """
    auto = getattr(datamodule, "auto_augment", None)
    if "train" in splits and (datamodule.augment or auto):
        what = f"auto_augment={auto!r}" if auto else "augment=True"
        raise CachingUnavailableError(
            f"Feature caching is off: the training transforms are random ({what}), so "
            "each epoch must see new views. Pass augment=False (and auto_augment=None) to "
            "cache features."
        )
    trainable = [n for n, p in backbone.named_parameters() if p.requires_grad]
    if trainable:
        raise CachingUnavailableError(
            f"Feature caching needs a frozen backbone; {len(trainable)} parameters are "
            f"trainable (e.g. {trainable[:3]})."
        )
    datamodule.adopt_data_config(backbone.data_config)
    datamodule.setup()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backbone.to(device)
    cached = {}
    for split in splits:
        if split in datamodule.datasets:
            loader = datamodule.loader(split, shuffle=False)
            rows = compute_features(
                backbone, loader, device=device, progress=progress, desc=f"caching {split} features"
            )
            cached[split] = (FeatureBatch(rows.tensors[0]), rows.tensors[1])
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


class LoaderDataModule(L.LightningDataModule):
    """Ready-made data loaders as a LightningDataModule.

    :class:`FeatureCache` serves cached rows through the data module's hooks; loaders passed
    straight to ``trainer.fit(model, train_dataloaders=...)`` never go through one. Wrap them:
    ``trainer.fit(model, datamodule=LoaderDataModule(train_loader, val_loader))``.
    """

    def __init__(self, train: Any, val: Any = None) -> None:
        super().__init__()
        self.train, self.val = train, val
        if val is not None:  # as LightningDataModule.from_datasets: no val hook, no val loop
            self.val_dataloader = lambda: self.val

    def train_dataloader(self) -> Any:
        return self.train


def _serves_rows(loaders: Any) -> bool:
    """Whether Lightning is iterating cached rows (checked on what it really holds)."""
    items = loaders if isinstance(loaders, (list, tuple)) else [loaders]
    return any(isinstance(getattr(dl, "dataset", None), FeatureRows) for dl in items)


class FeatureCache(Callback):
    """Train the head on cached backbone features while the backbone is static.

    Added by ``FineTuner(cache_features=...)``; works with any LightningModule that has a
    ``feature_extractor`` (an ``nn.Module``), an ``extract_features(x)`` method and a
    ``forward`` that accepts a :class:`FeatureBatch` in place of the inputs. The data must
    come from a LightningDataModule (``trainer.fit(model, datamodule=...)``; see
    :class:`LoaderDataModule` for plain loaders).

    Args:
        mode: ``True``: cache whenever it is safe, warn when it is not (and why);
            ``"auto"``: cache whenever it is safe, silently (reasons are logged);
            ``None``: automatic, whenever the backbone is static: fully frozen (BatchNorm in
            inference mode), or in the all-gated first phase of a
            :class:`~ftlight.callbacks.staged.StagedUnfreeze` run (the computed rows are
            logged, reasons not to cache are logged, not warned); ``False``: never.
        half: store rows in float16 (``None``: when training on CUDA).
        cache_dir: folder for memory-mapped rows (``None``: a temporary folder).
        max_memory_bytes: above this size a split's rows are memory-mapped on disk.

    The caching pass leaves the global RNG state as it found it, so shuffling and dropout
    draw the same numbers as in an uncached run.
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
        # (split, dataset id, type, length) -> (weights version, rows); emptied when fit ends
        self.store: dict[tuple, tuple[Any, FeatureRows]] = {}
        self._decided: tuple[int, bool] | None = None
        self._static_memo: tuple[int, tuple[bool, str | None]] | None = None
        self._params: list[nn.Parameter] | None = None
        self._said: set[str] = set()
        self._unavailable: dict[str, tuple[Any, str]] = {}  # split -> (weights version, why)
        # split -> (hook name, the data module's own hook, what vars(datamodule) held)
        self._wrapped: dict[str, tuple[str, Callable[[], Any], Any]] = {}
        self._images: dict[str, tuple[int, Any]] = {}  # split -> (epoch loaded, its loaders)
        self._cached_splits: set[str] = set()  # splits Lightning holds cached rows for
        self._switch = False  # those rows must give way to images at the coming epoch
        self._reload = 0  # the Trainer's own reload_dataloaders_every_n_epochs
        self._datamodule: L.LightningDataModule | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    # ---- wiring ------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.mode is False:
            return
        datamodule = trainer.datamodule
        if datamodule is None:
            self._off(
                "it needs a LightningDataModule, and the data came as plain loaders "
                "(trainer.fit(model, train_dataloaders=...)), which Lightning iterates as "
                "they are. Pass trainer.fit(model, datamodule=...), e.g. "
                "ftlight.callbacks.feature_cache.LoaderDataModule(train_loader, val_loader)"
            )
            return
        if isinstance(datamodule, FeatureDataModule):  # cache_features(): rows already
            return
        self._datamodule = datamodule
        self._reload = trainer.reload_dataloaders_every_n_epochs
        for split in ("train", "val"):
            name = f"{split}_dataloader"
            if not is_overridden(name, datamodule):
                continue
            # Lightning calls data-module hooks by name: serve through this instance attribute.
            self._wrapped[split] = (name, getattr(datamodule, name), vars(datamodule).get(name))
            setattr(datamodule, name, functools.partial(self._serve, trainer, split))

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._unwire(trainer)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._unwire(trainer)

    def _unwire(self, trainer: L.Trainer) -> None:
        for name, _, previous in self._wrapped.values():
            if previous is None:
                delattr(self._datamodule, name)
            else:
                setattr(self._datamodule, name, previous)
        if self._wrapped:
            trainer.reload_dataloaders_every_n_epochs = self._reload
        self._wrapped, self._images, self._cached_splits, self._switch = {}, {}, set(), False
        self._datamodule, self._decided, self._unavailable = None, None, {}
        self._static_memo, self._params = None, None
        self.store.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    # Loaders are reloaded only to switch from cached rows to images (an extra reload would
    # draw from the global RNG and change the shuffling): the Trainer is asked to reload
    # (reload_dataloaders_every_n_epochs=1) from the epoch end before a switch until every
    # split has switched, and runs with its own setting otherwise.
    def _sync_reload(self, trainer: L.Trainer) -> None:
        switching = self._switch and bool(self._cached_splits)
        trainer.reload_dataloaders_every_n_epochs = 1 if switching else self._reload

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Resuming from an epoch-end checkpoint, the first loaders were requested while
        # current_epoch still named the finished epoch; check them against the real one.
        if self._wrapped:
            epoch = trainer.current_epoch
            self._switch = not self._static(trainer, pl_module, epoch)[0]
            self._sync_reload(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._wrapped:
            return
        self._check_fresh(trainer, pl_module, trainer.train_dataloader, "training")
        if _serves_rows(trainer.train_dataloader):
            self.epochs_cached.append(trainer.current_epoch)
        self._sync_reload(trainer)  # the validation rows may still have to switch

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._wrapped:
            upcoming = trainer.current_epoch + 1
            self._switch = not self._static(trainer, pl_module, upcoming)[0]
            self._sync_reload(trainer)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._wrapped:
            self._check_fresh(trainer, pl_module, trainer.val_dataloaders, "validation")

    def _check_fresh(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loaders: Any, what: str
    ) -> None:
        """Fail loudly rather than train or validate on stale rows."""
        epoch = trainer.current_epoch
        if not _serves_rows(loaders):
            return
        if self._params is None:  # the extractor's parameters, listed once per fit
            extractor = getattr(pl_module, "feature_extractor", None)
            self._params = list(extractor.parameters()) if isinstance(extractor, nn.Module) else []
        if not any(p.requires_grad for p in self._params):
            return
        _, moving = self._trainable(trainer, pl_module, epoch)  # fresh: a callback may unfreeze
        if moving:
            raise RuntimeError(
                f"FeatureCache: Lightning is iterating cached feature rows for {what} in epoch "
                f"{epoch}, but the backbone trains ({len(moving)} parameters, e.g. "
                f"{moving[:2]}). Either the loaders were not reloaded as "
                "reload_dataloaders_every_n_epochs=1 asks (this Lightning version changed how "
                "they are reloaded) or a callback unfroze the backbone during the epoch. Pass "
                "cache_features=False (FineTuner) or compile(..., cache_features=False) "
                "(compat)."
            )

    # ---- decisions ---------------------------------------------------------------------
    def _off(self, reason: str) -> None:
        self.active, self.reason = False, reason
        self._say(f"Feature caching is off: {reason}.")

    def _say(self, message: str) -> None:
        if message in self._said:
            return
        self._said.add(message)
        if self.mode is True:
            rank_zero_warn(message)
        else:
            rank_zero_info(message)

    def static_at(
        self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int
    ) -> tuple[bool, str | None]:
        """Whether the feature extractor stays unchanged through ``epoch`` (frozen, or gated
        by a :class:`~ftlight.callbacks.StagedUnfreeze`, and deterministic), and if not, why.
        The training data is not looked at (see ``ImageDataModule.settle_augment``)."""
        if self.mode is False:
            return False, "cache_features=False"
        return self._decide(trainer, pl_module, epoch)

    def _static(
        self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int
    ) -> tuple[bool, str | None]:
        """Whether the extractor stays unchanged through ``epoch`` (and if not, why);
        computed once per epoch (head-only epochs take milliseconds)."""
        if self._static_memo is None or self._static_memo[0] != epoch:
            self._static_memo = (epoch, self._decide(trainer, pl_module, epoch))
        return self._static_memo[1]

    def _trainable(
        self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int
    ) -> tuple[list[str], list[str]]:
        """Extractor parameters with gradients, and those of them that step in ``epoch``."""
        extractor = getattr(pl_module, "feature_extractor", None)
        if not isinstance(extractor, nn.Module):
            return [], []
        trainable = [(n, p) for n, p in extractor.named_parameters() if p.requires_grad]
        if not trainable:  # the usual frozen phase: nothing else to look at
            return [], []
        staged = _staged_callback(trainer)
        gated: set[int] = set()
        if staged is not None:
            names = staged.gated_parameter_names(pl_module, epoch)
            gated = {id(p) for n, p in pl_module.named_parameters() if n in names}
        return [n for n, _ in trainable], [n for n, p in trainable if id(p) not in gated]

    def _decide(
        self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int
    ) -> tuple[bool, str | None]:
        extractor = getattr(pl_module, "feature_extractor", None)
        if not isinstance(extractor, nn.Module) or not hasattr(pl_module, "extract_features"):
            return False, f"{type(pl_module).__name__} has no feature_extractor"
        if getattr(pl_module, "mixes_inputs", False):  # FineTuner(mixup_alpha/cutmix_alpha)
            return False, (
                "the model mixes training images (mixup/cutmix), and cached features are of "
                "unmixed images (mixup_alpha=cutmix_alpha=0, or mixup_prob=0, to cache)"
            )
        trainable, moving = self._trainable(trainer, pl_module, epoch)
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

    def _decide_epoch(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int) -> bool:
        if self._decided is not None and self._decided[0] == epoch:
            return self._decided[1]
        allowed, reason = self._static(trainer, pl_module, epoch)
        if allowed and "train" in self._wrapped:
            loader = self._image_loaders(trainer, "train", epoch)
            if isinstance(loader, DataLoader):
                reason = loader_randomness(loader)
                auto = getattr(self._datamodule, "auto_augment", None)
                if reason is None and (getattr(self._datamodule, "augment", False) or auto):
                    what = f"auto_augment={auto!r}" if auto else "augment=True"
                    reason = f"the data module augments training images ({what})"
                if reason:
                    reason += "; each epoch must see new samples (pass augment=False to cache)"
            else:
                reason = f"the training data is a {type(loader).__name__}, not one DataLoader"
            allowed = reason is None
        if not allowed:
            self._off(str(reason))
            if self.store:
                log.info("Feature cache invalidated before epoch %d: %s", epoch, reason)
                self.store.clear()
        self.active = allowed
        self._decided = (epoch, allowed)
        return allowed

    # ---- serving -------------------------------------------------------------------------
    def _image_loaders(self, trainer: L.Trainer, split: str, epoch: int) -> Any:
        """The data module's own loaders, fetched as often as the Trainer alone would."""
        held = self._images.get(split)
        if held is None or (self._reload and epoch - held[0] >= self._reload):
            held = (epoch, self._wrapped[split][1]())
            self._images[split] = held
        return held[1]

    def _serve(self, trainer: L.Trainer, split: str) -> Any:
        """Stands in for the data module's ``<split>_dataloader``."""
        pl_module = trainer.lightning_module
        epoch = trainer.current_epoch
        loaders = self._image_loaders(trainer, split, epoch)
        served = loaders
        if self._decide_epoch(trainer, pl_module, epoch):
            served = self._cached_loaders(trainer, pl_module, loaders, split)
        if served is loaders:
            self._cached_splits.discard(split)
        else:
            self._cached_splits.add(split)
        # Lightning checks this split's loader right after the call (e.g. pinned memory with
        # persistent workers and reloads): it sees the Trainer's own setting.
        trainer.reload_dataloaders_every_n_epochs = self._reload
        return served

    def _cached_loaders(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loaders: Any, split: str
    ) -> Any:
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
                self._decided = (trainer.current_epoch, False)
            else:  # the head still trains on cached rows; this split runs on its inputs
                self._say(f"Feature caching is off for the {split} data: {err}.")
            return loaders
        return cached[0] if single else cached

    def _cached_loader(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loader: DataLoader, split: str
    ) -> DataLoader:
        if isinstance(loader.dataset, FeatureRows):  # already cached rows: served as they are
            return loader
        batch_size, shuffle, drop_last = _batching(loader)
        if isinstance(loader.dataset, IterableDataset):
            raise CachingUnavailableError("the data is an IterableDataset")
        key = (split, id(loader.dataset), type(loader.dataset).__name__, len(loader.dataset))
        version = weights_version(pl_module.feature_extractor)
        hit = self.store.get(key)
        if hit is None or hit[0] != version:
            rows = self._compute(trainer, pl_module, loader, split)
            self.store[key] = (version, rows)
        rows = self.store[key][1]
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

    def _compute(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loader: DataLoader, split: str
    ) -> FeatureRows:
        device = pl_module.device
        backbone = getattr(pl_module, "backbone", None)
        # the frozen backbone runs every image once: fold its BatchNorm (ftlight.models.fold)
        folded = isinstance(backbone, Backbone)
        with backbone.folded_inference() if folded else contextlib.nullcontext():
            rows = self._compute_rows(trainer, pl_module, loader, split, device)
        features = rows.tensors[0]
        rank_zero_info(
            f"FeatureCache: {len(rows)} {split} feature rows {tuple(features.shape[1:])} "
            f"computed once; the head {'trains' if split == 'train' else 'is scored'} on them "
            "while the backbone is frozen."
        )
        return rows

    def _compute_rows(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        loader: DataLoader,
        split: str,
        device: torch.device,
    ) -> FeatureRows:
        half = device.type == "cuda" if self.half is None else self.half
        return compute_features(
            pl_module,
            _in_order(loader),
            extract=pl_module.extract_features,
            device=device,
            transfer=functools.partial(_transfer, trainer, pl_module),
            precision=trainer.precision_plugin.forward_context,
            half=half,
            allocate=functools.partial(self._allocate, device=device, split=split),
            desc=split,
        )

    def _allocate(
        self, size: tuple[int, ...], dtype: torch.dtype, *, device: torch.device, split: str
    ) -> torch.Tensor:
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
        path = f"{folder}/{split}-{size[0]}x{'x'.join(map(str, size[1:]))}-f{bits}.npy"
        array = np.lib.format.open_memmap(
            path, mode="w+", dtype=np.float16 if dtype == torch.float16 else np.float32, shape=size
        )
        log.info("Memory-mapping %s feature rows (%.1f GB) at %s", split, nbytes / 1e9, path)
        return torch.from_numpy(array)


def _transfer(trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, device: Any) -> Any:
    """Lightning's public batch-transfer hooks, the data module's where it overrides them
    (device moves and GPU decoding, as in training)."""
    datamodule = trainer.datamodule

    def hook(name: str) -> Callable[..., Any]:
        if datamodule is not None and is_overridden(name, datamodule):
            return getattr(datamodule, name)
        return getattr(pl_module, name)

    batch = hook("on_before_batch_transfer")(batch, 0)
    batch = hook("transfer_batch_to_device")(batch, device, 0)
    return hook("on_after_batch_transfer")(batch, 0)


def _staged_callback(trainer: L.Trainer) -> StagedUnfreeze | None:
    return next((cb for cb in trainer.callbacks if isinstance(cb, StagedUnfreeze)), None)
