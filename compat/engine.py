"""The backend loop: a LightningModule around a compat model, driven by ``lightning.Trainer``
for ``fit`` / ``evaluate`` / ``predict``. Data arrives in Keras layout (NHWC), turned into
batches by :mod:`compat.data_adapters`."""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import sys
import time
import warnings
from collections.abc import Iterator
from typing import Any

import lightning as L
import numpy as np
import torch

from compat import backend, data_adapters
from compat import callbacks as callbacks_mod
from compat import metrics as metrics_mod
from compat.feature_cache import StaticPrefix, static_prefix
from compat.trainer import CompileConfig, Trainer
from ftlight.callbacks.feature_cache import (
    CachingUnavailableError,
    FeatureBatch,
    FeatureCache,
    LoaderDataModule,
)

# ----- compile state --------------------------------------------------------------------


def _check_optimizer_knows(model: TorchTrainer) -> None:
    """Trainable changes after ``compile`` take effect at the next ``fit`` (Keras 3): a layer
    frozen since simply stops training; one unfrozen after the optimizer was built is an
    error, as in Keras (its optimizer has no slots for it), until ``compile`` is called."""
    opt = model.optimizer
    opt._variable_names = {id(v.value): v.name for v in model.trainable_weights}
    if opt.torch_optimizer is None:
        return
    known = {id(p) for g in opt.torch_optimizer.param_groups for p in g["params"]}
    unknown = [v.path for v in model.trainable_weights if id(v.value) not in known]
    if unknown:
        raise ValueError(
            f"Unknown variable: {unknown[:5]}{'...' if len(unknown) > 5 else ''}. This "
            "optimizer can only be called for the variables it was originally built with "
            "(they became trainable after the first fit). Call `model.compile(...)` again "
            "to train them, as in Keras."
        )


# ----- data (the adapters live in compat.data_adapters) -------------------------------------


def _as_float(x: torch.Tensor) -> torch.Tensor:
    """Integer / uint8 / float64 / float16 inputs -> float32, as Keras casts inputs to the
    model's float dtype (arrays stay uint8 in memory until their batch is used; mixed
    precision casts further under autocast)."""
    return x if x.dtype == torch.float32 else x.float()


_unpack = data_adapters.unpack_x_y_sample_weight


# ----- the LightningModule -------------------------------------------------------------


class _Tracker:
    """Loss mean and compiled metrics for one phase (train / val)."""

    def __init__(self, metric_objs: list[Any]) -> None:
        self.metrics = metric_objs
        self.loss = metrics_mod.Mean()

    def reset(self) -> None:
        self.loss.reset_state()
        for m in self.metrics:
            m.reset_state()

    def logs(self, prefix: str = "") -> dict[str, float]:
        out = {}
        for m in self.metrics:
            out[prefix + m.name] = float(m.result())
        out[prefix + "loss"] = float(self.loss.result())
        return out


class KerasLightningModule(L.LightningModule):
    """Runs a compiled compat model: loss (+ regularization), metrics, optimizer, BN policy."""

    def __init__(self, model: TorchTrainer) -> None:
        super().__init__()
        self.model = model
        config: CompileConfig | None = model._compile_config
        self.loss_fn = config.loss_fn if config else None
        metric_objs = config.metric_objs if config else []
        self.train_tracker = _Tracker(metric_objs)
        self.val_tracker = _Tracker([copy.deepcopy(m) for m in metric_objs])
        # Keras with no trainable weights (model.trainable = False after compile): every
        # step computes the loss and metrics, updates nothing, and warns.
        self._frozen = not model.trainable_weights
        self.automatic_optimization = not self._frozen
        self._inference = list(getattr(model, "_inference_modules", []))
        self._prefix: StaticPrefix | None = None
        self.val_steps = 0

    def train(self, mode: bool = True) -> KerasLightningModule:
        """Switch modes, keeping frozen / ``training=False`` parts in inference mode."""
        super().train(mode)
        if mode:
            for module in self._inference:
                module.training = False
        return self

    # ----- feature caching (ftlight.callbacks.feature_cache.FeatureCache) -------------------
    def use_static_prefix(self, prefix: StaticPrefix) -> None:
        """Let :class:`~ftlight.callbacks.feature_cache.FeatureCache` serve ``prefix``'s outputs."""
        self._prefix = prefix

    @property
    def feature_extractor(self) -> torch.nn.Module | None:
        """The model's static prefix (the cached part), or ``None``."""
        return None if self._prefix is None else self._prefix.extractor

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        """Keras-layout inputs -> the static prefix's output (internal layout)."""
        assert self._prefix is not None
        x = _as_float(x)
        f = self._prefix.features(backend.to_internal(x))
        if f[0].numel() > x[0].numel():  # e.g. only an early conv block is frozen
            raise CachingUnavailableError(
                f"the static prefix's output ({tuple(f.shape[1:])}) is larger than its input "
                f"({tuple(x.shape[1:])}); recomputing it is cheaper than storing it"
            )
        return f

    def forward(self, x: torch.Tensor | FeatureBatch) -> torch.Tensor:
        """Keras-layout inputs, or cached prefix rows (a ``FeatureBatch``) -> Keras-layout
        outputs."""
        if isinstance(x, FeatureBatch):
            return backend.to_keras(self._prefix.head(x.features))
        if isinstance(x, (list, tuple)):  # a multi-input model: one tensor per input
            out = self.model.forward([backend.to_internal(_as_float(t)) for t in x])
        else:
            out = self.model.forward(backend.to_internal(_as_float(x)))
        if isinstance(out, (list, tuple)):  # a multi-output model
            return [backend.to_keras(o) for o in out]
        return backend.to_keras(out)

    def configure_optimizers(self) -> torch.optim.Optimizer | None:
        if self._frozen:  # the optimizer stays unbuilt, as Keras's never applies
            return None
        opt = self.model.optimizer
        if opt.torch_optimizer is None:
            opt.build(self.model.parameters())
        return opt.torch_optimizer

    def on_train_epoch_start(self) -> None:
        # Lightning restores sub-module modes as they were; Keras semantics are re-applied here.
        self.model.train()
        for module in self._inference:
            module.training = False

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        for module in self._inference:
            module.training = False

    def _loss(self, y: torch.Tensor, y_pred: torch.Tensor, sw: Any) -> torch.Tensor:
        per = self.loss_fn.per_sample(y, y_pred)
        if sw is not None:
            per = per * sw.to(per.dtype).reshape(per.shape)
        return per.mean()

    def _step(self, batch: Any, tracker: _Tracker, training: bool) -> torch.Tensor:
        x, y, sw = _unpack(batch)
        if y is None:
            raise ValueError(
                "Training and evaluation need targets: pass `y`, or a dataset "
                "that yields (x, y) batches."
            )
        y_pred = self(x).float()
        loss = self._loss(y, y_pred, sw)
        regs = self.model.regularization_losses()
        if regs:
            loss = loss + torch.stack(regs).sum()
        tracker.loss.update_state(loss.detach(), sample_weight=len(y_pred))
        for m in tracker.metrics:
            m.update_state(y, y_pred.detach())
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        if self._frozen:
            warnings.warn("The model does not have any trainable weights.", stacklevel=2)
            with torch.no_grad():
                return self._step(batch, self.train_tracker, True)
        return self._step(batch, self.train_tracker, True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, self.val_tracker, False)
        self.val_steps = batch_idx + 1

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, _, _ = _unpack(batch)
        out = self(x)
        if isinstance(out, list):
            return [o.detach().cpu() for o in out]
        return out.detach().cpu()


# ----- Lightning callbacks: Keras callbacks and the progress line ----------------------


class _KerasBridge(L.Callback):
    def __init__(
        self,
        model: TorchTrainer,
        cbs: list[Any],
        initial_epoch: int,
        train: data_adapters.DataAdapter,
        val: data_adapters.DataAdapter | None = None,
    ) -> None:
        self.model, self.cbs, self.initial_epoch = model, cbs, initial_epoch
        self.train, self.val, self.has_val = train, val, val is not None
        self.needs_batch_logs = any(
            type(cb).on_train_batch_end is not callbacks_mod.Callback.on_train_batch_end
            for cb in cbs
        )

    def _epoch(self, trainer: L.Trainer) -> int:
        return self.initial_epoch + trainer.current_epoch

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        for cb in self.cbs:
            cb.on_train_begin({})

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        pl_module.train_tracker.reset()
        self.train.on_epoch_begin()
        for cb in self.cbs:
            cb.on_epoch_begin(self._epoch(trainer), {})

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.needs_batch_logs:
            logs = pl_module.train_tracker.logs()
            for cb in self.cbs:
                cb.on_train_batch_end(batch_idx, logs)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        pl_module.val_tracker.reset()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if self.val is not None:
            self.val.on_epoch_end()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        logs = pl_module.train_tracker.logs()
        if self.has_val:
            logs.update(pl_module.val_tracker.logs("val_"))
        pl_module._last_logs = logs
        self.train.on_epoch_end()
        for cb in self.cbs:
            cb.on_epoch_end(self._epoch(trainer), logs)
        if self.model.stop_training:
            trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        for cb in self.cbs:
            cb.on_train_end(getattr(pl_module, "_last_logs", {}))


def _fmt_logs(logs: dict[str, float]) -> str:
    return " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())


def _fmt_time(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds >= 1 else f"{seconds * 1000:.0f}ms"


class _Progress(L.Callback):
    """Keras-like output: ``verbose=1`` a progress bar per epoch, ``verbose=2`` one line."""

    def __init__(self, verbose: int, epochs: int, initial_epoch: int) -> None:
        self.verbose, self.epochs, self.initial_epoch = verbose, epochs, initial_epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.start = time.perf_counter()
        total = trainer.num_training_batches  # inf for a generator
        self.total: int | None = int(total) if math.isfinite(total) else None
        self.done = 0
        print(f"Epoch {self.initial_epoch + trainer.current_epoch + 1}/{self.epochs}")

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.done = done = batch_idx + 1
        if self.verbose != 1:
            return
        elapsed = time.perf_counter() - self.start
        total = "Unknown" if self.total is None else self.total
        bar = "━" * int(20 * done / max(self.total or done, 1))
        line = (
            f"\r{done}/{total} {bar:<20} {_fmt_time(elapsed)} "
            f"{_fmt_time(elapsed / done)}/step - {_fmt_logs(pl_module.train_tracker.logs())}"
        )
        sys.stdout.write(line)
        sys.stdout.flush()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        elapsed = time.perf_counter() - self.start
        logs = getattr(pl_module, "_last_logs", pl_module.train_tracker.logs())
        if self.total is None:  # a generator: the steps it gave
            self.total = self.done
        step = _fmt_time(elapsed / max(self.total, 1))
        if self.verbose == 1:
            bar = "━" * 20
            print(
                f"\r{self.total}/{self.total} {bar} {_fmt_time(elapsed)} {step}/step - "
                f"{_fmt_logs(logs)}"
            )
        else:
            print(
                f"{self.total}/{self.total} - {_fmt_time(elapsed)} - {step}/step - "
                f"{_fmt_logs(logs)}"
            )


# ----- the Trainer ---------------------------------------------------------------------


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric", "lightning")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*LightningModule.*has parameters that were not.*")
        warnings.filterwarnings("ignore", ".*`training_step` returned `None`.*")
        warnings.filterwarnings("ignore", ".*Checkpoint directory.*")
        warnings.filterwarnings("ignore", ".*LeafSpec.*")
        warnings.filterwarnings("ignore", ".*but have no `val_dataloader`.*")
        warnings.filterwarnings("ignore", ".*module\\(s\\) in eval mode at the start.*")
        warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
        warnings.filterwarnings("ignore", ".*`IterableDataset` has `__len__` defined.*")
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def make_trainer(**kwargs: Any) -> L.Trainer:
    from compat import distribution, mixed_precision

    options: dict[str, Any] = {
        "accelerator": "auto",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "precision": mixed_precision.lightning_precision(),
    }
    options.update(distribution.trainer_options())
    options.update(kwargs)
    return L.Trainer(**options)


def _verbose(verbose: Any) -> int:
    if verbose == "auto":
        return 1
    if verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 'auto', 0, 1 or 2. Received: verbose={verbose!r}")
    return int(verbose)


def fit(
    model: TorchTrainer,
    *,
    x: Any,
    y: Any,
    batch_size: int | None,
    epochs: int,
    verbose: Any,
    callbacks: Any,
    validation_split: float,
    validation_data: Any,
    shuffle: bool,
    class_weight: Any,
    sample_weight: Any,
    initial_epoch: int,
    steps_per_epoch: int | None,
    validation_steps: int | None,
    validation_batch_size: int | None,
    validation_freq: int,
) -> callbacks_mod.History:
    model._require_compiled("fit")
    if x is None:
        raise ValueError("fit() needs training data `x`.")
    if validation_freq != 1:
        raise NotImplementedError("fit(validation_freq != 1)")
    verbose = _verbose(verbose)
    if validation_split and validation_data is None:
        (x, y, sample_weight), validation_data = data_adapters.train_validation_split(
            (x, y, sample_weight), validation_split
        )
    _ensure_built(model, x)
    train = data_adapters.get_data_adapter(
        x,
        y,
        sample_weight,
        batch_size=batch_size,
        steps_per_epoch=steps_per_epoch,
        shuffle=shuffle,
        class_weight=class_weight,
    )
    val = None
    if validation_data is not None:
        if isinstance(validation_data, tuple):
            if len(validation_data) not in (2, 3):
                raise ValueError(
                    "validation_data must be a tuple (x_val, y_val) or (x_val, y_val, "
                    f"val_sample_weight), or a dataset. Received a tuple of "
                    f"{len(validation_data)} items."
                )
            val_args = validation_data
        else:
            val_args = (validation_data,)
        val = data_adapters.get_data_adapter(
            *val_args,
            batch_size=validation_batch_size or batch_size,
            steps_per_epoch=validation_steps,
            shuffle=False,
            what="validation_data",
        )
    history = callbacks_mod.History()
    user_cbs = list(callbacks or [])
    for cb in user_cbs:
        if not isinstance(cb, callbacks_mod.Callback):
            raise TypeError(
                f"callbacks must be compat.callbacks.Callback instances. Received: {cb!r}"
            )
    cbs = [*user_cbs, history]
    params = {"epochs": epochs, "verbose": verbose, "steps": steps_per_epoch or train.num_batches}
    for cb in cbs:
        cb.set_model(model)
        cb.set_params(params)
    model.stop_training = False
    model._apply_trainable()
    _check_optimizer_knows(model)
    module = KerasLightningModule(model)
    bridge = _KerasBridge(model, cbs, initial_epoch, train, val)
    lcbs: list[L.Callback] = [bridge]
    train_loader = train.get_torch_dataloader()
    num_batches = _num_batches(train)
    if steps_per_epoch and (num_batches is None or steps_per_epoch < num_batches):
        # Keras runs one pass on across epochs; such epochs are not fixed samples to cache
        train_loader = data_adapters.steps_per_epoch_loader(
            train_loader, steps_per_epoch, num_batches
        )
    else:
        lcbs += _feature_cache(model, module, train, val)
    if verbose:
        lcbs.append(_Progress(verbose, epochs, initial_epoch))
    remaining = epochs - initial_epoch
    if remaining > 0:
        with _quiet():
            trainer = make_trainer(
                max_epochs=remaining,
                callbacks=lcbs,
                limit_train_batches=steps_per_epoch or 1.0,
                limit_val_batches=validation_steps or 1.0,
            )
            # A data module: FeatureCache serves cached rows through its hooks.
            trainer.fit(
                module,
                datamodule=LoaderDataModule(train_loader, val and val.get_torch_dataloader()),
            )
    model.history = history
    return history


def _num_batches(adapter: data_adapters.DataAdapter) -> int | None:
    """Batches per pass, or ``None`` when unknown (a generator, an unsized DataLoader)."""
    try:
        return adapter.num_batches
    except TypeError:
        return None


def _feature_cache(
    model: TorchTrainer,
    module: KerasLightningModule,
    train: data_adapters.DataAdapter,
    val: data_adapters.DataAdapter | None,
) -> list[Any]:
    """A :class:`~ftlight.callbacks.FeatureCache` when the model has a static prefix and the
    batches are fixed samples (arrays or DataLoaders; not batch sequences such as
    ``ImageDataGenerator.flow``, which may augment). It re-checks per epoch, silently."""
    adapters = [a for a in (train, val) if a is not None]
    if not model._require_compiled("fit").cache_features or not all(
        a.fixed_samples for a in adapters
    ):
        return []
    prefix = static_prefix(model, module._inference)
    if prefix is None:
        return []
    module.use_static_prefix(prefix)
    return [FeatureCache("auto")]


def _ensure_built(model: TorchTrainer, x: Any) -> None:
    """Build an unbuilt model from the data, or check the data against the input shape."""
    if not data_adapters.is_array_like(x):
        return
    shape = (None, *np.shape(x)[1:])
    channels_first = len(shape) == 4 and shape[1] in (1, 3) and shape[3] not in (1, 3, 4)
    hint = (
        f"The data looks channels-first (N, C, H, W) = {tuple(np.shape(x))}; compat, like "
        "Keras, takes channels-last images (N, H, W, C): pass x.transpose(0, 2, 3, 1)."
    )
    if channels_first and not model.built:
        warnings.warn(hint + " The model is being built for this shape as given.", stacklevel=4)
    try:
        model._maybe_build(shape)
    except ValueError as err:
        if channels_first:
            raise ValueError(f"{err}. {hint}") from err
        raise


def evaluate(
    model: TorchTrainer,
    *,
    x: Any,
    y: Any,
    batch_size: int | None,
    verbose: Any,
    sample_weight: Any,
    steps: int | None,
    callbacks: Any,
    return_dict: bool,
) -> Any:
    model._require_compiled("evaluate")
    _ensure_built(model, x)
    adapter = data_adapters.get_data_adapter(
        x, y, sample_weight, batch_size=batch_size, steps_per_epoch=steps, shuffle=False
    )
    loader = adapter.get_torch_dataloader()
    module = KerasLightningModule(model)
    with _quiet():
        trainer = make_trainer(limit_val_batches=steps or 1.0)
        module.val_tracker.reset()
        trainer.validate(module, dataloaders=loader, verbose=False)
    adapter.on_epoch_end()
    logs = module.val_tracker.logs()
    ordered = {"loss": logs.pop("loss"), **logs}
    if _verbose(verbose):
        done = module.val_steps
        print(f"{done}/{done} - {_fmt_logs(ordered)}")
    if return_dict:
        return ordered
    values = list(ordered.values())
    return values[0] if len(values) == 1 else values


def predict(
    model: TorchTrainer,
    x: Any,
    *,
    batch_size: int | None,
    verbose: Any,
    steps: int | None,
    callbacks: Any,
) -> np.ndarray:
    inputs = len(model._inputs) if getattr(model, "_multi_in", False) else 1
    if inputs == 1:
        _ensure_built(model, x)
    adapter = data_adapters.get_data_adapter(
        x, batch_size=batch_size, steps_per_epoch=steps, shuffle=False, inputs=inputs
    )
    if inputs > 1:  # checks each array against its input, as Keras
        model._check_input_shape([(None, *t.shape[1:]) for t in adapter.x])
    module = KerasLightningModule(model)
    with _quiet():
        trainer = make_trainer(limit_predict_batches=steps or 1.0)
        outs = trainer.predict(module, dataloaders=adapter.get_torch_dataloader())
    adapter.on_epoch_end()
    if outs and isinstance(outs[0], list):  # a multi-output model: a list, as Keras's
        return [torch.cat(parts).numpy() for parts in zip(*outs, strict=True)]
    return torch.cat(outs).numpy()


# ----- the backend trainer mixin ---------------------------------------------------------


class TorchTrainer(Trainer):
    """``fit`` / ``evaluate`` / ``predict`` on the loop above (Keras's torch trainer);
    ``Model`` inherits it. Data arrives in Keras layout (NHWC NumPy arrays, datasets or
    torch DataLoaders)."""

    def fit(
        self,
        x: Any = None,
        y: Any = None,
        batch_size: int | None = None,
        epochs: int = 1,
        verbose: Any = "auto",
        callbacks: Any = None,
        validation_split: float = 0.0,
        validation_data: Any = None,
        shuffle: bool = True,
        class_weight: Any = None,
        sample_weight: Any = None,
        initial_epoch: int = 0,
        steps_per_epoch: int | None = None,
        validation_steps: int | None = None,
        validation_batch_size: int | None = None,
        validation_freq: int = 1,
    ) -> Any:
        """Train on NumPy NHWC arrays, a dataset/iterator or a torch DataLoader; returns a
        :class:`compat.callbacks.History` with Keras's keys."""
        return fit(self, **{k: v for k, v in locals().items() if k not in ("self", "__class__")})

    def evaluate(
        self,
        x: Any = None,
        y: Any = None,
        batch_size: int | None = None,
        verbose: Any = "auto",
        sample_weight: Any = None,
        steps: int | None = None,
        callbacks: Any = None,
        return_dict: bool = False,
    ) -> Any:
        """Loss (scalar) or ``[loss, *metrics]``, or a dict with ``return_dict=True``."""
        if callbacks:
            raise NotImplementedError("evaluate(callbacks=...): callbacks run in fit() only")
        return evaluate(
            self, **{k: v for k, v in locals().items() if k not in ("self", "__class__")}
        )

    def predict(
        self,
        x: Any,
        batch_size: int | None = None,
        verbose: Any = "auto",
        steps: int | None = None,
        callbacks: Any = None,
    ) -> np.ndarray:
        """Model outputs as NumPy arrays (channels-last for images)."""
        if callbacks:
            raise NotImplementedError("predict(callbacks=...): callbacks run in fit() only")
        return predict(
            self, x, batch_size=batch_size, verbose=verbose, steps=steps, callbacks=callbacks
        )

    def predict_on_batch(self, x: Any) -> np.ndarray:
        self.eval()
        with torch.no_grad():
            out = self._eager_call(x, False)
        if isinstance(out, list):  # a multi-output model
            return [o.cpu().numpy() for o in out]
        return out.cpu().numpy()
