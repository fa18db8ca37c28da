"""``keras.utils.PyDataset`` (and its old name ``Sequence``): batches by index.

``fit``/``evaluate``/``predict`` read ``dataset[i]`` for ``i`` in ``range(len(dataset))``
and call ``on_epoch_end()`` after each training epoch, as Keras does. Batches are read in
the training process: ``workers > 1`` and ``use_multiprocessing=True`` raise instead of
being ignored (the results would be the same, only the speed differs).
"""

from __future__ import annotations

from typing import Any


class PyDataset:
    """Subclass and implement ``__getitem__(index) -> batch`` and ``__len__``."""

    _compat_batches = True

    def __init__(
        self, workers: int = 1, use_multiprocessing: bool = False, max_queue_size: int = 10
    ) -> None:
        if workers not in (0, 1) or use_multiprocessing:
            raise NotImplementedError(
                f"PyDataset(workers={workers}, use_multiprocessing={use_multiprocessing}): "
                "compat reads batches in the training process; leave both at their defaults."
            )
        self._workers = workers
        self._use_multiprocessing = use_multiprocessing
        self._max_queue_size = max_queue_size

    @property
    def workers(self) -> int:
        return getattr(self, "_workers", 1)

    @property
    def use_multiprocessing(self) -> bool:
        return getattr(self, "_use_multiprocessing", False)

    @property
    def max_queue_size(self) -> int:
        return getattr(self, "_max_queue_size", 10)

    def __getitem__(self, index: int) -> Any:
        raise NotImplementedError

    def __len__(self) -> int:
        num_batches = self.num_batches
        if num_batches is None:
            raise NotImplementedError(
                f"{type(self).__name__} must implement `__len__` or `num_batches`."
            )
        return num_batches

    @property
    def num_batches(self) -> int | None:
        if type(self).__len__ is not PyDataset.__len__:
            return len(self)
        return None

    def on_epoch_begin(self) -> None:
        """Called at the start of every epoch."""

    def on_epoch_end(self) -> None:
        """Called at the end of every epoch."""

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]


Sequence = PyDataset

__all__ = ["PyDataset", "Sequence"]
