"""``keras.losses``: per-sample losses with Keras's conventions (probabilities by default,
``from_logits``, ``label_smoothing``, probabilities clipped to ``[1e-7, 1 - 1e-7]``)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

EPSILON = 1e-7


class Loss:
    name = "loss"

    def __init__(
        self,
        from_logits: bool = False,
        label_smoothing: float = 0.0,
        reduction: str = "sum_over_batch_size",
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        if reduction not in ("sum_over_batch_size", "auto"):
            raise NotImplementedError(f"{type(self).__name__}(reduction={reduction!r})")
        if kwargs.pop("axis", -1) != -1:
            raise NotImplementedError(f"{type(self).__name__}(axis=...)")
        if kwargs.pop("dtype", None) not in (None, "float32"):
            raise NotImplementedError(f"{type(self).__name__}(dtype=...): float32 only")
        if kwargs:
            raise NotImplementedError(f"{type(self).__name__}({', '.join(kwargs)}=...)")
        self.from_logits = bool(from_logits)
        self.label_smoothing = float(label_smoothing)
        if name:
            self.name = name

    def per_sample(self, y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> torch.Tensor:
        y_true, y_pred = torch.as_tensor(y_true), torch.as_tensor(y_pred)
        values = self.per_sample(y_true, y_pred)
        if sample_weight is not None:
            values = values * torch.as_tensor(sample_weight, dtype=values.dtype)
        return values.mean()

    def get_config(self) -> dict[str, Any]:
        return {"from_logits": self.from_logits, "label_smoothing": self.label_smoothing}


def _check_pair(y_true: torch.Tensor, y_pred: torch.Tensor, what: str) -> None:
    if y_true.shape != y_pred.shape:
        raise ValueError(
            f"{what}: arguments `target` and `output` must have the same shape. Received: "
            f"target.shape={tuple(y_true.shape)}, output.shape={tuple(y_pred.shape)}"
        )


class CategoricalCrossentropy(Loss):
    name = "categorical_crossentropy"

    def per_sample(self, y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
        integer_labels = y_true.ndim == y_pred.ndim - 1 or (
            y_true.ndim == y_pred.ndim and y_true.shape[-1] == 1 < y_pred.shape[-1]
        )
        if integer_labels and y_true.ndim >= 1 and y_true.shape[0] == y_pred.shape[0]:
            raise ValueError(
                "categorical_crossentropy expects one-hot labels of shape "
                f"{(*y_true.shape[: y_pred.ndim - 1], y_pred.shape[-1])}. Received integer "
                f"labels: target.shape={tuple(y_true.shape)}, output.shape="
                f"{tuple(y_pred.shape)}. Use loss='sparse_categorical_crossentropy', or "
                f"one-hot encode them: keras.utils.to_categorical(y, {y_pred.shape[-1]})."
            )
        _check_pair(y_true, y_pred, "categorical_crossentropy")
        y_true = y_true.to(y_pred.dtype)
        if self.label_smoothing:
            y_true = y_true * (1 - self.label_smoothing) + self.label_smoothing / y_true.shape[-1]
        if self.from_logits:
            log_p = F.log_softmax(y_pred, dim=-1)
        else:
            p = y_pred / y_pred.sum(-1, keepdim=True)
            log_p = p.clamp(EPSILON, 1 - EPSILON).log()
        return -(y_true * log_p).sum(-1)


class SparseCategoricalCrossentropy(Loss):
    name = "sparse_categorical_crossentropy"

    def __init__(
        self, from_logits: bool = False, ignore_class: int | None = None, **kwargs: Any
    ) -> None:
        if ignore_class is not None:
            raise NotImplementedError("SparseCategoricalCrossentropy(ignore_class=...)")
        super().__init__(from_logits=from_logits, **kwargs)

    def per_sample(self, y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
        if y_true.ndim == y_pred.ndim and y_true.shape[-1] == 1:
            y_true = y_true[..., 0]
        if y_true.ndim != y_pred.ndim - 1:
            hint = ""
            if y_true.shape == y_pred.shape:
                hint = (
                    " These look like one-hot labels: use loss='categorical_crossentropy', or "
                    "pass integer labels (y.argmax(-1))."
                )
            raise ValueError(
                "sparse_categorical_crossentropy expects integer labels of shape (batch,). "
                f"Received: target.shape={tuple(y_true.shape)}, output.shape="
                f"{tuple(y_pred.shape)}.{hint}"
            )
        if y_true.is_floating_point() and not torch.equal(y_true, y_true.round()):
            raise ValueError(
                "sparse_categorical_crossentropy expects integer class indices. Received "
                f"non-integer values, e.g. {float(y_true[y_true != y_true.round()][0])}."
            )
        target = y_true.long()
        n = y_pred.shape[-1]
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= n):
            bad = int(target.max()) if int(target.max()) >= n else int(target.min())
            raise ValueError(
                f"Received a label value of {bad} which is outside the valid range of "
                f"[0, {n - 1}] (the model has {n} outputs). "
                "Check the labels, or give the last Dense layer one unit per class."
            )
        if self.from_logits:
            log_p = F.log_softmax(y_pred, dim=-1)
        else:
            p = y_pred / y_pred.sum(-1, keepdim=True)
            log_p = p.clamp(EPSILON, 1 - EPSILON).log()
        return -log_p.gather(-1, target.unsqueeze(-1)).squeeze(-1)


class BinaryCrossentropy(Loss):
    name = "binary_crossentropy"

    def per_sample(self, y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
        if y_true.ndim == y_pred.ndim - 1:
            y_true = y_true.unsqueeze(-1)
        _check_pair(y_true, y_pred, "binary_crossentropy")
        y_true = y_true.to(y_pred.dtype)
        if self.label_smoothing:
            y_true = y_true * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
        if self.from_logits:
            values = F.binary_cross_entropy_with_logits(y_pred, y_true, reduction="none")
        else:
            p = y_pred.clamp(EPSILON, 1 - EPSILON)
            values = -(y_true * p.log() + (1 - y_true) * (1 - p).log())
        return values.mean(-1)


class MeanSquaredError(Loss):
    name = "mean_squared_error"

    def per_sample(self, y_true: torch.Tensor, y_pred: torch.Tensor) -> torch.Tensor:
        return (y_pred - y_true.to(y_pred.dtype).reshape(y_pred.shape)).square().mean(-1)


_BY_NAME = {
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "binary_crossentropy": BinaryCrossentropy,
    "mean_squared_error": MeanSquaredError,
    "mse": MeanSquaredError,
}


def categorical_crossentropy(
    y_true: Any, y_pred: Any, from_logits: bool = False, label_smoothing: float = 0.0
) -> torch.Tensor:
    loss = CategoricalCrossentropy(from_logits=from_logits, label_smoothing=label_smoothing)
    return loss.per_sample(torch.as_tensor(y_true), torch.as_tensor(y_pred))


def sparse_categorical_crossentropy(
    y_true: Any, y_pred: Any, from_logits: bool = False
) -> torch.Tensor:
    loss = SparseCategoricalCrossentropy(from_logits=from_logits)
    return loss.per_sample(torch.as_tensor(y_true), torch.as_tensor(y_pred))


def binary_crossentropy(
    y_true: Any, y_pred: Any, from_logits: bool = False, label_smoothing: float = 0.0
) -> torch.Tensor:
    loss = BinaryCrossentropy(from_logits=from_logits, label_smoothing=label_smoothing)
    return loss.per_sample(torch.as_tensor(y_true), torch.as_tensor(y_pred))


def get(identifier: Any) -> Loss:
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, str) and identifier in _BY_NAME:
        return _BY_NAME[identifier]()
    if identifier is None:
        raise ValueError("compile(): a `loss` is required to train or evaluate.")
    raise NotImplementedError(
        f"Loss {identifier!r}. Supported: {sorted(_BY_NAME)} or a compat.losses.Loss instance."
    )
