"""``keras.metrics``: stateful metrics accumulated on the model's device.

``"accuracy"`` resolves as Keras resolves it, from the shapes of labels and predictions:
one output unit -> binary accuracy; integer labels -> sparse categorical; else categorical.
``AUC``, ``Precision`` and ``Recall`` use torchmetrics (binary tasks, threshold 0.5).
"""

from __future__ import annotations

from typing import Any

import torch
import torchmetrics


class Metric:
    name = "metric"

    def __init__(self, name: str | None = None, **kwargs: Any) -> None:
        if kwargs.pop("dtype", None) not in (None, "float32"):
            raise NotImplementedError(f"{type(self).__name__}(dtype=...): float32 only")
        if kwargs:
            raise NotImplementedError(f"{type(self).__name__}({', '.join(kwargs)}=...)")
        if name:
            self.name = name
        self.reset_state()

    def reset_state(self) -> None:
        self._total = torch.zeros(())
        self._count = torch.zeros(())

    def _values(self, y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        y_true, y_pred = torch.as_tensor(y_true), torch.as_tensor(y_pred).detach()
        values = self._values(y_true, y_pred).float()
        if self._total.device != values.device:
            self._total, self._count = self._total.to(values.device), self._count.to(values.device)
        if sample_weight is not None:
            w = torch.as_tensor(sample_weight, device=values.device).float()
            self._total = self._total + (values * w).sum()
            self._count = self._count + w.sum()
        else:
            self._total = self._total + values.sum()
            self._count = self._count + values.numel()

    def result(self) -> torch.Tensor:
        return self._total / self._count.clamp_min(1e-12)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_total"], state["_count"] = torch.zeros(()), torch.zeros(())
        return state


class Mean(Metric):
    name = "mean"

    def update_state(self, values: Any, sample_weight: Any = None) -> None:  # type: ignore[override]
        v = torch.as_tensor(values).detach().float()
        if self._total.device != v.device:
            self._total, self._count = self._total.to(v.device), self._count.to(v.device)
        n = float(sample_weight) if sample_weight is not None else 1.0
        self._total = self._total + v.sum() * n
        self._count = self._count + v.numel() * n


class CategoricalAccuracy(Metric):
    name = "categorical_accuracy"

    def _values(self, y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
        return (y_true.argmax(-1) == y_pred.argmax(-1)).float()


class SparseCategoricalAccuracy(Metric):
    name = "sparse_categorical_accuracy"

    def _values(self, y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
        if y_true.ndim == y_pred.ndim:
            y_true = y_true[..., 0]
        return (y_true.long() == y_pred.argmax(-1)).float()


class BinaryAccuracy(Metric):
    name = "binary_accuracy"

    def __init__(self, name: str | None = None, threshold: float = 0.5, **kw: Any) -> None:
        self.threshold = threshold
        super().__init__(name, **kw)

    def _values(self, y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
        y_true = y_true.reshape(y_pred.shape).float()
        return ((y_pred > self.threshold).float() == y_true).float().mean(-1)


class Accuracy(Metric):
    """``"accuracy"``: binary, sparse categorical or categorical, chosen from the shapes."""

    name = "accuracy"

    def __init__(self, name: str | None = None, **kwargs: Any) -> None:
        self._impl: Metric | None = None
        super().__init__(name, **kwargs)

    def reset_state(self) -> None:
        super().reset_state()
        if getattr(self, "_impl", None) is not None:
            self._impl.reset_state()

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        if self._impl is None:
            y_true, y_pred = torch.as_tensor(y_true), torch.as_tensor(y_pred)
            if y_pred.shape[-1] == 1:
                self._impl = BinaryAccuracy()
            elif y_true.ndim < y_pred.ndim or (
                y_true.ndim == y_pred.ndim and y_true.shape[-1] == 1
            ):
                self._impl = SparseCategoricalAccuracy()
            else:
                self._impl = CategoricalAccuracy()
        self._impl.update_state(y_true, y_pred, sample_weight)

    def result(self) -> torch.Tensor:
        return self._impl.result() if self._impl is not None else torch.zeros(())


class TopKCategoricalAccuracy(Metric):
    name = "top_k_categorical_accuracy"

    def __init__(self, k: int = 5, name: str | None = None, **kwargs: Any) -> None:
        self.k = k
        super().__init__(name, **kwargs)

    def _labels(self, y_true: torch.Tensor) -> torch.Tensor:
        return y_true.argmax(-1)

    def _values(self, y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
        top = y_pred.topk(min(self.k, y_pred.shape[-1]), dim=-1).indices
        return (top == self._labels(y_true).long().unsqueeze(-1)).any(-1).float()


class SparseTopKCategoricalAccuracy(TopKCategoricalAccuracy):
    name = "sparse_top_k_categorical_accuracy"

    def _labels(self, y_true: torch.Tensor) -> torch.Tensor:
        return y_true.reshape(-1)


class _TorchMetric(Metric):
    factory: Any = None

    def __init__(self, name: str | None = None, thresholds: Any = None, **kwargs: Any) -> None:
        if thresholds is not None and not isinstance(thresholds, float):
            raise NotImplementedError(f"{type(self).__name__}(thresholds={thresholds!r})")
        self.threshold = thresholds if isinstance(thresholds, float) else 0.5
        self._tm: torchmetrics.Metric | None = None
        super().__init__(name, **kwargs)

    def _make(self) -> torchmetrics.Metric:
        return type(self).factory(threshold=self.threshold)

    def reset_state(self) -> None:
        self._tm = self._make()

    def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
        y_true, y_pred = torch.as_tensor(y_true), torch.as_tensor(y_pred).detach()
        if y_pred.ndim == 2 and y_pred.shape[-1] > 1:
            raise NotImplementedError(
                f"{type(self).__name__} on multi-class outputs {tuple(y_pred.shape)}: compat "
                "supports the binary case (one output unit)"
            )
        if self._tm is None:  # loaded from a file: built on first use (see __setstate__)
            self._tm = self._make()
        if self._tm.device != y_pred.device:
            self._tm = self._tm.to(y_pred.device)
        self._tm.update(y_pred.reshape(-1).float(), y_true.reshape(-1).long())

    def result(self) -> torch.Tensor:
        if self._tm is None:
            self._tm = self._make()
        return self._tm.compute()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_tm"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # unpickling only sets state: the torchmetrics object (whose size a file's
        # thresholds would choose) is made on first use, never while a file is read
        self.__dict__.update(state)
        self._tm = None


class AUC(_TorchMetric):
    name = "auc"

    def __init__(
        self, num_thresholds: int = 200, curve: str = "ROC", name: str | None = None, **kwargs: Any
    ) -> None:
        if curve != "ROC":
            raise NotImplementedError(f"AUC(curve={curve!r})")
        self.num_thresholds = num_thresholds
        super().__init__(name, **kwargs)

    def _make(self) -> torchmetrics.Metric:
        return torchmetrics.classification.BinaryAUROC(thresholds=self.num_thresholds)


class Precision(_TorchMetric):
    name = "precision"
    factory = torchmetrics.classification.BinaryPrecision


class Recall(_TorchMetric):
    name = "recall"
    factory = torchmetrics.classification.BinaryRecall


_BY_NAME = {
    "accuracy": Accuracy,
    "acc": Accuracy,
    "categorical_accuracy": CategoricalAccuracy,
    "sparse_categorical_accuracy": SparseCategoricalAccuracy,
    "binary_accuracy": BinaryAccuracy,
    "top_k_categorical_accuracy": TopKCategoricalAccuracy,
    "sparse_top_k_categorical_accuracy": SparseTopKCategoricalAccuracy,
    "auc": AUC,
    "precision": Precision,
    "recall": Recall,
}


def get(identifier: Any) -> Metric:
    if isinstance(identifier, Metric):
        return identifier
    if isinstance(identifier, str) and identifier in _BY_NAME:
        metric = _BY_NAME[identifier]()
        if identifier == "acc":
            metric.name = "acc"
        return metric
    raise NotImplementedError(
        f"Metric {identifier!r}. Supported: {sorted(_BY_NAME)} or a compat.metrics.Metric instance."
    )
