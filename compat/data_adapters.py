"""Data adapters (Keras's ``keras/src/trainers/data_adapters``): every kind of input that
``fit`` / ``evaluate`` / ``predict`` accept becomes batches of Keras-layout tensors in a torch
``DataLoader``, one adapter per input kind, chosen by :func:`get_data_adapter`, which also
raises Keras's errors for combinations Keras refuses (``y`` with a dataset, ...).

Input kinds: in-memory arrays (NumPy arrays, torch tensors, nested lists of numbers),
``PyDataset`` / ``Sequence`` and ``ImageDataGenerator`` iterators, datasets from
``image_dataset_from_directory`` (Keras gives a ``tf.data.Dataset`` there), torch
``DataLoader`` s and Python generators.

Import order: ``engine`` -> ``data_adapters`` (which imports nothing from compat).
"""

from __future__ import annotations

import itertools
import math
import types
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

# ----- conversions -----------------------------------------------------------------------


def to_tensor(x: Any, what: str) -> torch.Tensor:
    """An array-like -> a tensor (float64 -> float32, as Keras's default float type)."""
    if isinstance(x, torch.Tensor):
        return x
    try:
        arr = np.asarray(x)
    except Exception as err:  # pragma: no cover - defensive
        raise TypeError(f"{what} must be array-like. Received: {type(x)}") from err
    if arr.dtype == object:
        raise TypeError(
            f"{what} must be a numeric array. Received dtype=object with shape {arr.shape}"
        )
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr))


def check_finite(t: torch.Tensor, what: str) -> None:
    """NaN or Inf in the data is an error (Keras would train on it and report ``loss: nan``)."""
    if not t.is_floating_point() or bool(torch.isfinite(t).all()):
        return
    bad = (~torch.isfinite(t)).reshape(len(t), -1).any(1).nonzero().flatten().tolist()
    kinds = [k for k, f in (("NaN", torch.isnan), ("Inf", torch.isinf)) if bool(f(t).any())]
    raise ValueError(
        f"`{what}` contains {' and '.join(kinds)} values in {len(bad)} of {len(t)} samples "
        f"(indices {bad[:10]}{'...' if len(bad) > 10 else ''}). Remove or repair those samples, "
        f"e.g. keep = np.isfinite({what}).reshape(len({what}), -1).all(1)."
    )


def class_weight_to_sample_weights(y: Any, class_weight: dict) -> torch.Tensor:
    """Per-sample weights from ``class_weight`` (Keras's ``data_adapter_utils``): one-hot
    labels by argmax, others rounded (``np.round``, so soft binary labels 0.6 -> class 1);
    classes missing from ``class_weight`` weigh 1.0. Keras applies them while training only,
    so ``val_loss`` stays unweighted."""
    labels = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if labels.ndim > 1:
        labels = np.argmax(labels, axis=-1) if labels.shape[-1] != 1 else labels[..., 0]
    labels = np.round(labels).astype("int64").reshape(len(labels), -1)[:, 0]
    return torch.tensor([float(class_weight.get(int(c), 1.0)) for c in labels])


def unpack_x_y_sample_weight(batch: Any) -> tuple[Any, Any, Any]:
    """A batch -> ``(x, y, sample_weight)`` (Keras's ``data_adapter_utils``)."""
    if isinstance(batch, (list, tuple)):
        x = batch[0]
        y = batch[1] if len(batch) > 1 else None
        sw = batch[2] if len(batch) > 2 else None
        return x, y, sw
    return batch, None, None


# ----- input kinds -----------------------------------------------------------------------


def is_py_dataset(x: Any) -> bool:
    """A ``PyDataset``-like batch source: ``PyDataset`` / ``Sequence``, ``ImageDataGenerator``
    iterators and ``image_dataset_from_directory`` datasets."""
    return (
        hasattr(x, "__getitem__")
        and hasattr(x, "__len__")
        and not isinstance(x, (np.ndarray, torch.Tensor, list, tuple))
        and getattr(x, "_compat_batches", False)
    )


def is_image_dataset(x: Any) -> bool:
    """compat's stand-in for the ``tf.data.Dataset`` that ``image_dataset_from_directory``
    returns in Keras (named so in errors; shuffled by the dataset itself, not by ``fit``)."""
    return is_py_dataset(x) and hasattr(x, "class_names") and hasattr(x, "file_paths")


def is_torch_dataloader(x: Any) -> bool:
    return isinstance(x, DataLoader)


def is_generator(x: Any) -> bool:
    return isinstance(x, types.GeneratorType)


def is_array_like(x: Any) -> bool:
    """In-memory arrays (Keras's ``can_slice_array``): NumPy arrays, tensors, lists of
    numbers and anything with ``__array__``."""
    return isinstance(x, (np.ndarray, torch.Tensor, list, tuple, int, float)) or (
        hasattr(x, "__array__") and not is_py_dataset(x)
    )


def raise_unsupported_arg(arg_name: str, arg_description: str, input_type: str) -> None:
    """Keras's error for an argument that belongs inside the dataset."""
    raise ValueError(
        f"When providing `x` as a {input_type}, `{arg_name}` "
        f"should not be passed. Instead, {arg_description} should "
        f"be included as part of the {input_type}."
    )


# ----- adapters --------------------------------------------------------------------------


class DataAdapter:
    """One input, as a torch ``DataLoader`` of Keras-layout batches."""

    #: the batches are the same samples every epoch (a feature cache may serve them)
    fixed_samples = True

    def get_torch_dataloader(self) -> DataLoader:
        raise NotImplementedError

    @property
    def num_batches(self) -> int | None:
        """Batches per epoch, or ``None`` when unknown (a generator)."""
        return len(self.get_torch_dataloader())

    def on_epoch_begin(self) -> None:
        """Called before each training epoch."""

    def on_epoch_end(self) -> None:
        """Called after each epoch (Keras calls ``PyDataset.on_epoch_end`` here)."""


class _ArrayBatches(Dataset):
    """Whole-batch indexing of in-memory tensors (one gather per batch, no collate)."""

    def __init__(self, *tensors: torch.Tensor | None) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, idx: list[int]) -> tuple:
        index = torch.as_tensor(idx)
        return tuple(_take(t, index) for t in self.tensors)


def _take(t: Any, index: torch.Tensor) -> Any:
    """Rows ``index`` of a tensor, or of each tensor of a multi-input model's list."""
    if t is None:
        return None
    return [x[index] for x in t] if isinstance(t, list) else t[index]


class ArrayDataAdapter(DataAdapter):
    """NumPy arrays / torch tensors in memory, batched (and shuffled) by index."""

    def __init__(
        self,
        x: Any,
        y: Any = None,
        sample_weight: Any = None,
        batch_size: int | None = None,
        steps: int | None = None,
        shuffle: bool = False,
        class_weight: Any = None,
        what: str = "x",
        inputs: int = 1,
    ) -> None:
        if sample_weight is not None and class_weight is not None:
            raise ValueError("You cannot `class_weight` and `sample_weight` at the same time.")
        if inputs > 1:
            self.x: Any = _input_list(x, inputs, what)
            n = len(self.x[0])
        else:
            if isinstance(x, dict) or (
                isinstance(x, list) and x and isinstance(x[0], np.ndarray) and np.ndim(x[0]) > 1
            ):
                raise NotImplementedError(f"{what} as a list/dict of arrays: multi-input models")
            self.x = to_tensor(x, what)
            check_finite(self.x, what)
            n = len(self.x)
        self.y = None if y is None else to_tensor(y, "y")
        if self.y is not None:
            check_finite(self.y, "y")
        self.sample_weight = (
            None if sample_weight is None else to_tensor(sample_weight, "sample_weight").float()
        )
        if class_weight is not None:
            if self.y is None:
                raise ValueError("`class_weight` needs targets `y` to weigh. Received y=None.")
            self.sample_weight = class_weight_to_sample_weights(self.y, class_weight)
        for label, t in (("y", self.y), ("sample_weight", self.sample_weight)):
            if t is not None and len(t) != n:  # Keras: ValueError too
                raise ValueError(
                    f"Data cardinality is ambiguous: x sizes: {n}, {label} sizes: "
                    f"{len(t)}. Make sure all arrays contain the same number of samples."
                )
        # as Keras: without batch_size, steps decide it; else 32
        if not batch_size:
            batch_size = math.ceil(n / steps) if steps else 32
        self.batch_size, self.shuffle = int(batch_size), bool(shuffle)
        samplers = torch.utils.data
        indices = range(n)
        order = (samplers.RandomSampler if self.shuffle else samplers.SequentialSampler)(indices)
        sampler = samplers.BatchSampler(order, self.batch_size, drop_last=False)
        self._loader = DataLoader(
            _ArrayBatches(self.x, self.y, self.sample_weight), batch_size=None, sampler=sampler
        )

    def get_torch_dataloader(self) -> DataLoader:
        return self._loader


def _input_list(x: Any, inputs: int, what: str) -> list[torch.Tensor]:
    """A multi-input model's ``x``: a list (or tuple) of one array per input, in order."""
    if not isinstance(x, (list, tuple)) or len(x) != inputs:
        got = f"a list of {len(x)}" if isinstance(x, (list, tuple)) else type(x).__name__
        raise ValueError(
            f"The model has {inputs} inputs: pass {what} as a list of {inputs} arrays, one per "
            f"input in the order of model.inputs. Received: {got}."
        )
    tensors = [to_tensor(v, f"{what}[{i}]") for i, v in enumerate(x)]
    for i, t in enumerate(tensors):
        check_finite(t, f"{what}[{i}]")
    sizes = [len(t) for t in tensors]
    if len(set(sizes)) > 1:
        raise ValueError(
            f"Data cardinality is ambiguous: {what} sizes: {', '.join(map(str, sizes))}. Make "
            "sure all arrays contain the same number of samples."
        )
    return tensors


class _BatchSequence(Dataset):
    """A Keras-style batch sequence (``__len__`` + ``__getitem__`` -> a batch) as tensors."""

    def __init__(self, seq: Any, class_weight: dict | None = None) -> None:
        self.seq, self.class_weight = seq, class_weight

    def __len__(self) -> int:
        return len(self.seq)

    def __getitem__(self, i: int) -> tuple:
        item = self.seq[i]
        if isinstance(item, list):
            item = tuple(item)
        if not isinstance(item, tuple):
            item = (item,)
        batch = tuple(to_tensor(v, "batch") for v in item)
        if self.class_weight is not None:  # as Keras's PyDatasetAdapter, per batch
            if len(batch) == 3:
                raise ValueError(
                    "You cannot specify `class_weight` and `sample_weight` at the same time."
                )
            if len(batch) == 2:
                batch = (*batch, class_weight_to_sample_weights(batch[1], self.class_weight))
        return batch


class PyDatasetAdapter(DataAdapter):
    """``PyDataset`` / ``Sequence`` and ``ImageDataGenerator`` iterators: ``dataset[i]`` for
    each batch index (in a shuffled order with ``shuffle=True``, as Keras), ``on_epoch_end``
    after each epoch. They may augment, so their batches are never cached."""

    fixed_samples = False

    def __init__(self, x: Any, shuffle: bool = False, class_weight: dict | None = None) -> None:
        self.py_dataset, self.shuffle = x, bool(shuffle)
        self._loader = DataLoader(
            _BatchSequence(x, class_weight), batch_size=None, shuffle=self.shuffle
        )

    def get_torch_dataloader(self) -> DataLoader:
        return self._loader

    def on_epoch_begin(self) -> None:
        if hasattr(self.py_dataset, "on_epoch_begin"):
            self.py_dataset.on_epoch_begin()

    def on_epoch_end(self) -> None:
        if hasattr(self.py_dataset, "on_epoch_end"):
            self.py_dataset.on_epoch_end()


class ImageDatasetAdapter(PyDatasetAdapter):
    """``image_dataset_from_directory``'s dataset: in its own order (it reshuffles its files
    each epoch when made with ``shuffle=True``); ``fit(shuffle=...)`` does not reorder it,
    as Keras does not reorder a ``tf.data.Dataset``."""

    def __init__(self, x: Any, class_weight: dict | None = None) -> None:
        super().__init__(x, shuffle=False, class_weight=class_weight)


class TorchDataLoaderAdapter(DataAdapter):
    """A torch ``DataLoader``, used as it is."""

    def __init__(self, dataloader: DataLoader) -> None:
        self.dataloader = dataloader

    def get_torch_dataloader(self) -> DataLoader:
        return self.dataloader


#: batches Keras reads ahead from a generator (and replays at the start of every epoch)
NUM_BATCHES_FOR_TENSOR_SPEC = 2


class _GeneratorBatches(IterableDataset):
    def __init__(self, first_batches: list[tuple], generator: Iterator[Any]) -> None:
        self.first_batches, self.generator = first_batches, generator

    def __iter__(self) -> Iterator[tuple]:
        for item in itertools.chain(self.first_batches, self.generator):
            yield tuple(to_tensor(v, "batch") for v in item)


class GeneratorDataAdapter(DataAdapter):
    """A Python generator of ``(x,)``, ``(x, y)`` or ``(x, y, sample_weight)`` tuples, read
    once. As in Keras, the first two batches are read ahead and, without ``steps_per_epoch``,
    every epoch starts with them, then continues the generator where the last epoch stopped;
    with ``steps_per_epoch`` one pass runs on across epochs (no replay) until the generator
    ends (see :func:`steps_per_epoch_loader`)."""

    fixed_samples = False

    def __init__(self, generator: Iterator[Any]) -> None:
        first_batches = list(itertools.islice(generator, NUM_BATCHES_FOR_TENSOR_SPEC))
        if not first_batches:
            raise ValueError(
                "When passing a Python generator to a Keras model, "
                "the generator must yield at least one batch. "
                "Received an empty generator."
            )
        if not isinstance(first_batches[0], tuple):
            raise ValueError(
                "When passing a Python generator to a Keras model, "
                "the generator must return a tuple, either "
                "(input,) or (inputs, targets) or "
                "(inputs, targets, sample_weights). "
                f"Received: {first_batches[0]}"
            )
        self.generator = generator
        self._loader = DataLoader(_GeneratorBatches(first_batches, generator), batch_size=None)

    def get_torch_dataloader(self) -> DataLoader:
        return self._loader

    @property
    def num_batches(self) -> int | None:
        return None


# ----- steps_per_epoch ---------------------------------------------------------------------


def _interrupted_warning() -> None:
    warnings.warn(
        "Your input ran out of data; interrupting training. "
        "Make sure that your dataset or generator can generate "
        "at least `steps_per_epoch * epochs` batches. "
        "You may need to use the `.repeat()` "
        "function when building your dataset.",
        stacklevel=2,
    )


class _StepsPerEpoch(IterableDataset):
    """Keras's ``EpochIterator`` with ``steps_per_epoch``: one iterator over the data runs on
    across epochs, ``steps`` batches an epoch (10 samples, batch 2, 2 steps: epochs of 2, 2, 1
    batches, then a fresh pass); a pass that ends early cuts the epoch short with Keras's
    warning. A generator is never restarted while it still yields."""

    def __init__(self, loader: Any, steps: int, num_batches: int | None) -> None:
        self.loader, self.steps, self.num_batches = loader, int(steps), num_batches
        self._iterator: Iterator[Any] | None = None
        self._seen = 0

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[Any]:
        if self._iterator is None:
            self._iterator, self._seen = iter(self.loader), 0
        for _ in range(self.steps):
            if self.num_batches and self._seen >= self.num_batches:
                _interrupted_warning()
                break
            self._seen += 1
            try:
                batch = next(self._iterator)
            except StopIteration:
                if self.num_batches is None:  # as Keras: counts the step that found no data
                    self.num_batches = self._seen
                _interrupted_warning()
                self._iterator = None
                return
            yield batch
        if self.num_batches and self._seen >= self.num_batches:
            self._iterator = None  # the next epoch starts a new pass (a new shuffle order)


def steps_per_epoch_loader(loader: Any, steps: int, num_batches: int | None) -> DataLoader:
    """``loader`` cut into epochs of ``steps`` batches that continue one another, as Keras's
    ``fit(steps_per_epoch=...)`` (Lightning would restart the loader every epoch)."""
    return DataLoader(_StepsPerEpoch(loader, steps, num_batches), batch_size=None)


# ----- the entry point -------------------------------------------------------------------


def _refuse_targets_and_weights(kind: str, y: Any, sample_weight: Any) -> None:
    """Keras's errors for ``y`` or ``sample_weight`` next to a ``kind`` of dataset (which
    carries its own)."""
    if y is not None:
        raise_unsupported_arg("y", "the targets", kind)
    if sample_weight is not None:
        raise_unsupported_arg("sample_weights", "the sample weights", kind)


def _ignore_shuffle(shuffle: bool, provided_as: str) -> None:
    """Keras's warning that ``shuffle=True`` does not reorder data ``provided_as`` a dataset
    (reported where ``get_data_adapter`` was called, as Keras's)."""
    if shuffle:
        warnings.warn(
            f"`shuffle=True` was passed, but will be ignored since the data `x` was provided "
            f"as {provided_as}",
            stacklevel=3,
        )


# Inputs that yield whole batches and take no ``class_weight``: (test, the name Keras's
# errors give them, Keras's refusal of class_weight, the end of Keras's shuffle warning,
# adapter), in the order get_data_adapter tries them.
_BATCH_ITERATORS: tuple[tuple[Callable[[Any], bool], str, str, str, type[DataAdapter]], ...] = (
    (
        is_torch_dataloader,
        "torch DataLoader",
        "Argument `class_weight` is not supported for torch DataLoader inputs. You can modify "
        "your `__getitem__ ` method to return input tensor, label and class_weight. "
        "Alternatively, use a custom training loop. See the User Guide "
        "https://keras.io/guides/custom_train_step_in_torch/"
        "#supporting-sampleweight-amp-classweight for more details. ",
        "a torch DataLoader. The DataLoader is expected to already be shuffled.",
        TorchDataLoaderAdapter,
    ),
    (
        is_generator,
        "generator",
        "Argument `class_weight` is not supported for Python generator inputs. ",
        "a generator. The generator is expected to yield already-shuffled data.",
        GeneratorDataAdapter,
    ),
)


def get_data_adapter(
    x: Any,
    y: Any = None,
    sample_weight: Any = None,
    batch_size: int | None = None,
    steps_per_epoch: int | None = None,
    shuffle: bool = False,
    class_weight: Any = None,
    what: str = "x",
    inputs: int = 1,
) -> DataAdapter:
    """The adapter for ``x`` (Keras's ``get_data_adapter``), with Keras's errors for
    arguments that a dataset must carry itself. ``batch_size`` is ignored for datasets, as
    in Keras (their batches are already made)."""
    if isinstance(x, DataAdapter):
        return x
    if is_py_dataset(x):
        kind = "tf.data.Dataset" if is_image_dataset(x) else "PyDataset"
        _refuse_targets_and_weights(kind, y, sample_weight)
        if is_image_dataset(x):
            _ignore_shuffle(
                shuffle,
                "a tf.data.Dataset. The Dataset is expected to already be shuffled "
                "(via `.shuffle(buffer_size)`).",
            )
            return ImageDatasetAdapter(x, class_weight=class_weight)
        return PyDatasetAdapter(x, shuffle=shuffle, class_weight=class_weight)
    for is_kind, kind, class_weight_refusal, provided_as, adapter in _BATCH_ITERATORS:
        if is_kind(x):
            _refuse_targets_and_weights(kind, y, sample_weight)
            if class_weight is not None:
                raise ValueError(f"{class_weight_refusal}Received: class_weight={class_weight}")
            _ignore_shuffle(shuffle, provided_as)
            return adapter(x)
    if isinstance(x, dict):
        raise NotImplementedError(f"{what} as a dict of arrays: multi-input models")
    if not is_array_like(x):
        raise ValueError(f"Unrecognized data type: x={x} (of type {type(x)})")
    return ArrayDataAdapter(
        x,
        y,
        sample_weight=sample_weight,
        batch_size=batch_size,
        steps=steps_per_epoch,
        shuffle=shuffle,
        class_weight=class_weight,
        what=what,
        inputs=inputs,
    )


def train_validation_split(arrays: tuple, validation_split: float) -> tuple[tuple, tuple]:
    """``(x, y, sample_weight)`` -> the head for training and the tail for validation, as
    Keras's ``validation_split`` (arrays only)."""
    if not 0.0 < validation_split < 1.0:
        raise ValueError(f"validation_split must be in (0, 1). Received: {validation_split}")
    unsplitable = [type(a) for a in arrays if a is not None and not is_array_like(a)]
    if unsplitable:
        raise ValueError(
            "Argument `validation_split` is only supported "
            "for tensors or NumPy arrays."
            f"Found incompatible type in the input: {unsplitable}"
        )
    n = len(arrays[0])
    cut = int(n * (1.0 - validation_split))
    if cut in (0, n):
        raise ValueError(
            f"validation_split={validation_split} leaves no training or no validation samples "
            f"out of {n}."
        )
    train = tuple(None if a is None else a[:cut] for a in arrays)
    val = tuple(None if a is None else a[cut:] for a in arrays)
    return train, val


__all__ = [
    "ArrayDataAdapter",
    "DataAdapter",
    "GeneratorDataAdapter",
    "ImageDatasetAdapter",
    "PyDatasetAdapter",
    "TorchDataLoaderAdapter",
    "get_data_adapter",
    "train_validation_split",
    "unpack_x_y_sample_weight",
]
