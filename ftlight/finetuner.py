"""``FineTuner``: a LightningModule = pre-trained backbone + new head, frozen as asked."""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ftlight import recipes
from ftlight.callbacks.feature_cache import FeatureBatch, FeatureCache, FeatureRows
from ftlight.data.augment import BatchMixer
from ftlight.data.config import DataConfig
from ftlight.files import UnreadableFileError, load_torch_file
from ftlight.models.backbone import Backbone, create_backbone
from ftlight.models.freezing import BNPolicy, FreezeSpec, enforce_bn_policy, freeze_backbone
from ftlight.models.head import PROBE_AUTO_BUDGET, build_head, fit_linear_probe, linear_head
from ftlight.models.optim import build_optimizer, build_scheduler, split_decay, warmup_cosine
from ftlight.tta import probabilities_to_logits, resolve_tta, tta_probabilities
from ftlight.tuning import (
    LRFinder,
    is_auto,
    keep_group_ratios,
    numeric_lr,
    refuse_auto_with_backbone_lr,
)

Task = Literal["multiclass", "binary", "multilabel"]
# Optimizer settings a resume takes from the module, not from the restored optimizer state.
OPTIMIZER_HPARAMS = ("lr", "backbone_lr", "layer_decay", "weight_decay", "momentum")


class ClassNamesMismatchError(ValueError):
    """The data's classes are not those the model (or its checkpoint) was trained on."""


class FineTuner(L.LightningModule):
    """Fine-tune a pre-trained backbone with a new head.

    Args:
        backbone: registered name (``vgg16``, ``resnet50``, ``inception_v3``,
            ``efficientnet_lite0``, Keras spellings too) or any timm model name.
        num_classes: number of classes (1 or ``task="binary"``: one logit).
        weights: ``None``, ``"imagenet"`` or a local weights file (see ``create_backbone``).
        task: ``"multiclass"`` (softmax cross-entropy), ``"binary"`` or ``"multilabel"``.
        hidden: sizes of hidden Dense layers in the new head.
        activation, dropout, head_batchnorm: the head's layers.
        keep_fc: keep VGG16's fc1/fc2 and replace only the prediction layer.
        freeze: ``True`` (whole backbone), N (first N layer groups), names, or ``None``.
        bn: ``"frozen"`` (frozen BN layers in inference mode), ``"train"`` (all BN layers use
            batch statistics in training), or ``"inference"`` (every BN layer in inference mode,
            also when trainable: Keras's fine-tuning recipe).
        optimizer: ``adamw``, ``adam``, ``sgd`` or ``rmsprop``.
        lr: head learning rate, or ``"auto"``: Lightning's learning-rate finder picks it at the
            start of ``fit`` (:class:`ftlight.tuning.LRFinder`; checkpoints store the rate found).
        backbone_lr: learning rate of the backbone (default lr/10).
        layer_decay: multiply the backbone LR by this per group, from the top down.
        weight_decay: applied to weights only (never to norms and biases).
        scheduler: ``None`` (constant), ``"cosine"`` (with ``warmup_epochs``), ``"onecycle"``,
            or ``"auto"`` (default): cosine (with ``warmup_epochs``) over the fit when the head
            starts from the linear probe (``head_init``), constant otherwise (a random head and
            any fit with a :class:`~ftlight.callbacks.StagedUnfreeze`, which sets its own
            per-group warm-ups). A probed head sits at the optimum of the head's objective;
            AdamW at a constant rate turns the mini-batch noise there into steps of about
            ``lr`` per weight and walks it away (digits, 96 px, ``lr=1e-2``: 0.959 after the
            probe, 0.938 after 3 constant epochs, 0.948 annealed; 224 px 0.950 / 0.949 /
            0.957), while a random head in a short run loses by annealing (0.935 constant vs
            0.930 cosine); ``benchmarks/README.md``. The choice is kept in checkpoints.
        label_smoothing: for the multiclass cross-entropy (also of mixed soft targets).
        mixup_alpha, cutmix_alpha: mix training batches (multiclass only) with mixup / cutmix
            drawn from Beta(alpha, alpha) (torchvision's ``MixUp``/``CutMix``; 0: off), with soft
            targets; timm's recipe is 0.8 / 1.0. ``mixup_prob``: chance that a batch is mixed;
            ``mixup_switch_prob``: chance of cutmix when both are on. ``train_acc`` then counts
            agreement with each mixed image's dominant label. Mixing makes feature caching
            decline (cached features are of unmixed images); see :mod:`ftlight.data.augment`.
        tta: test-time augmentation in ``test`` and ``predict`` (not validation): ``"flip"``,
            ``"crops"`` or ``"flip+crops"``; the views' probabilities are averaged
            (:mod:`ftlight.tta`).
        class_names: names of the classes in label order (saved in checkpoints).
        image_size: override the weights' input size (e.g. for fast CPU runs).
        channels_last: use the channels-last memory format (``None``: on CUDA and CPU, where
            it is faster: on 2 CPU cores 1.1-1.7x for inference and training across
            EfficientNet-Lite0, ResNet50, VGG16 and InceptionV3,
            ``benchmarks/bench_inference_cpu.py``). ``test`` and ``predict`` (and the
            frozen-feature pass) also fold BatchNorm into the convolutions
            (:mod:`ftlight.models.fold`).
        cache_features: train the head on backbone features computed once while the backbone
            is static (frozen, BatchNorm in inference mode, deterministic training transforms);
            ``True`` warns when that is not possible and why; ``None`` (default) does it
            whenever the backbone is static: ``freeze=True`` with ``bn="frozen"``, or the
            all-gated first phase of a :class:`~ftlight.callbacks.StagedUnfreeze` run (logged
            once). An :class:`~ftlight.ImageDataModule` with ``augment=None`` (its default)
            then trains without random augmentation in that fit, logged once; an explicit
            ``augment=True`` is kept and turns caching off. See
            :class:`ftlight.callbacks.feature_cache.FeatureCache`.
        torch_compile: compile the backbone with ``torch.compile`` at set-up (state-dict keys
            are unchanged).
        ema_decay: keep an exponential moving average of the weights with this decay
            (:class:`ftlight.callbacks.EMA`): validated, left in the module after ``fit`` and
            saved as the checkpoints' weights. ``None``: no average.
        head_init: ``"random"`` (torch's default initialisation), ``"probe"``: before the
            first training step, the (linear) head is fitted to the cached features of the
            frozen backbone by full-batch L-BFGS logistic regression (the linear probe of
            LP-FT), then trains on as usual. Needs feature caching on in the first epoch (a
            clear error otherwise); once per module (not on resume, a second ``fit`` or a
            module rebuilt from a checkpoint); refused with ``lr="auto"``; under DDP rank
            0's fit is broadcast. Measured on digits: 0.959 held-out before any epoch,
            where 3 epochs of the head alone reach 0.93 (``benchmarks/README.md``).
            ``"auto"`` (default): the probe wherever it can run, silently random elsewhere:
            a linear head, the first epoch on cached features, a numeric ``lr`` with no
            learning-rate finder, no :class:`~ftlight.callbacks.StagedUnfreeze` (staged runs
            train the head for epochs first, and one process and several must start alike),
            at most ``PROBE_AUTO_BUDGET`` (2**31) rows x features x outputs (a bigger probe
            would cost more than its epochs save on a CPU).
        weights_strict: a weights file must hold every backbone weight with its shape (its
            classifier excepted); ``False`` loads the part that matches (see
            :func:`ftlight.models.weights.load_state_dict_file`).
    """

    def __init__(
        self,
        backbone: str = "resnet50",
        num_classes: int = 2,
        weights: str | None = None,
        *,
        task: Task = "multiclass",
        hidden: Sequence[int] = (),
        activation: str = "relu",
        dropout: float = 0.0,
        head_batchnorm: bool = False,
        keep_fc: bool = True,
        freeze: FreezeSpec = None,
        bn: BNPolicy = "frozen",
        optimizer: str = "adamw",
        lr: float | Literal["auto"] = 1e-3,
        backbone_lr: float | None = None,
        layer_decay: float | None = None,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        scheduler: str | None = "auto",
        warmup_epochs: float = 0.0,
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mixup_prob: float = 1.0,
        mixup_switch_prob: float = 0.5,
        tta: str | None = None,
        class_names: Sequence[str] | None = None,
        image_size: int | None = None,
        channels_last: bool | None = None,
        cache_features: bool | None = None,
        torch_compile: bool = False,
        weights_strict: bool = True,
        ema_decay: float | None = None,
        head_init: Literal["auto", "random", "probe"] = "auto",
    ) -> None:
        super().__init__()
        if class_names is not None and len(class_names) != num_classes and task != "binary":
            raise ValueError(f"{len(class_names)} class names given but num_classes={num_classes}.")
        if task not in ("multiclass", "binary", "multilabel"):
            raise ValueError(f"task must be multiclass, binary or multilabel. Received: {task!r}")
        if num_classes < 1 or (task == "multiclass" and num_classes < 2):
            raise ValueError(
                f"num_classes={num_classes} is too small for task={task!r} (expected >= 2, or "
                "task='binary')."
            )
        tta = resolve_tta(tta)
        BatchMixer(  # checks the settings
            num_classes,
            mixup_alpha=mixup_alpha,
            cutmix_alpha=cutmix_alpha,
            prob=mixup_prob,
            switch_prob=mixup_switch_prob,
        )
        if (mixup_alpha or cutmix_alpha) and task != "multiclass":
            raise ValueError(
                f"mixup/cutmix need task='multiclass' (soft targets over classes). Received: "
                f"task={task!r} with mixup_alpha={mixup_alpha}, cutmix_alpha={cutmix_alpha}."
            )
        _check_lr_and_ema(lr, backbone_lr, ema_decay)
        if head_init not in ("auto", "random", "probe"):
            raise ValueError(
                f"head_init must be 'auto', 'random' or 'probe'. Received: {head_init!r}"
            )
        if head_init == "probe" and is_auto(lr):
            raise ValueError(_PROBE_AND_FINDER)
        self.save_hyperparameters()
        self.backbone: Backbone = create_backbone(
            backbone, weights, keep_fc=keep_fc, image_size=image_size, weights_strict=weights_strict
        )
        self.num_outputs = 1 if task == "binary" else num_classes
        self.head = build_head(
            self.backbone.num_features,
            self.num_outputs,
            hidden=hidden,
            activation=activation,
            dropout=dropout,
            batchnorm=head_batchnorm,
        )
        if head_init == "probe":
            linear_head(self.head)  # a head the probe cannot fit is refused here, not at fit
        self.class_names = list(class_names) if class_names else None
        self.frozen_names = freeze_backbone(self.backbone, freeze)
        if self._channels_last(torch.device("cpu")):  # as built; setup() adapts to the device
            self.backbone.to(memory_format=torch.channels_last)
        enforce_bn_policy(self.backbone, bn)
        self._build_metrics()
        self.confusion_matrix: torch.Tensor | None = None
        # Per-layer-group learning rates set by StagedUnfreeze (name -> lr).
        self.group_lrs: dict[str, float] = {}
        # head_init="probe" fits the head once per module (checkpoints carry the flag)
        self.head_probed = False
        # scheduler="auto": whether this module's fits anneal (a probed head); checkpointed
        self.anneal = False

    # ---- properties ---------------------------------------------------------------------
    @property
    def data_config(self) -> DataConfig:
        return self.backbone.data_config

    @property
    def weights_info(self) -> Any:
        return self.backbone.weights_info

    @property
    def mixer(self) -> BatchMixer:
        """The mixup/cutmix of training batches, as the hyperparameters say now."""
        hp = self.hparams
        key = tuple(
            hp.get(name, default)
            for name, default in (
                ("mixup_alpha", 0.0),
                ("cutmix_alpha", 0.0),
                ("mixup_prob", 1.0),
                ("mixup_switch_prob", 0.5),
            )
        )
        held = self.__dict__.get("_mixer")
        if held is None or held[0] != key:
            mixer = BatchMixer(
                self.num_outputs,
                mixup_alpha=key[0],
                cutmix_alpha=key[1],
                prob=key[2],
                switch_prob=key[3],
            )
            held = self.__dict__["_mixer"] = (key, mixer)
        return held[1]

    @property
    def mixes_inputs(self) -> bool:
        """Whether training batches are mixed (mixup/cutmix): feature caching then declines."""
        return self.mixer.active

    @property
    def feature_extractor(self) -> Backbone:
        """The part whose output can be cached (see :class:`ftlight.callbacks.FeatureCache`)."""
        return self.backbone

    # ---- model --------------------------------------------------------------------------
    def _channels_last(self, device: torch.device | None = None) -> bool:
        flag = self.hparams.get("channels_last")
        if flag is None:
            return (device or self.device).type in ("cuda", "cpu")
        return bool(flag)

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, 3, H, W)`` -> backbone features ``(B, num_features)``."""
        if x.ndim == 4 and self._channels_last():  # other shapes: the backbone's error
            x = x.contiguous(memory_format=torch.channels_last)
        return self.backbone(x)

    def forward(self, x: torch.Tensor | FeatureBatch) -> torch.Tensor:
        """Images ``(B, 3, H, W)``, or cached backbone features marked as a
        :class:`~ftlight.callbacks.feature_cache.FeatureBatch` (head only) -> logits."""
        if isinstance(x, FeatureBatch):
            if tuple(x.features.shape[1:]) != (self.backbone.num_features,):
                raise ValueError(
                    f"Cached features must have {self.backbone.num_features} columns. "
                    f"Received: shape={tuple(x.features.shape)}"
                )
            return self.head(x.features)
        return self.head(self.extract_features(x))

    def train(self, mode: bool = True) -> FineTuner:
        """Switch modes, then put frozen BatchNorm layers back in inference mode."""
        super().train(mode)
        if mode:
            enforce_bn_policy(self.backbone, self.hparams.bn)
        return self

    def on_train_epoch_start(self) -> None:
        """Re-assert training mode and the BatchNorm policy at every epoch.

        Lightning (>= 2.6) keeps each sub-module's mode instead of calling ``train()``, so a
        model left in eval mode (after ``predict``, say) would otherwise train with dropout off
        and every BatchNorm frozen. Runs after the callbacks' hooks (``StagedUnfreeze`` marks
        its gated groups first).
        """
        self.train()

    def set_freeze(self, freeze: FreezeSpec) -> list[str]:
        """Change what is frozen (takes effect at the next ``fit``)."""
        self.hparams.freeze = freeze
        self.frozen_names = freeze_backbone(self.backbone, freeze)
        if self.training:
            self.train()
        return self.frozen_names

    def configure_callbacks(self) -> list[L.Callback]:
        """Feature caching for frozen phases (``cache_features``); when fitting, the
        learning-rate finder (``lr="auto"``) and the weights' average (``ema_decay``)."""
        trainer = self._trainer
        callbacks = trainer.callbacks if trainer is not None else []
        extra = _fit_callbacks(self, trainer)
        mode = self.hparams.get("cache_features")
        if mode is False:
            return extra
        if any(isinstance(cb, FeatureCache) and cb.mode == mode for cb in callbacks):
            return extra  # a second fit/test on the same Trainer keeps its cache callback
        return [FeatureCache(mode), *extra]

    def fine_tune(
        self,
        datamodule: L.LightningDataModule,
        epochs: int = recipes.EPOCHS,
        freeze_epochs: int = recipes.FREEZE_EPOCHS,
        **kwargs: Any,
    ) -> L.Trainer:
        """Head on cached features for ``freeze_epochs``, then the top layer groups unfrozen
        for ``epochs`` with per-group rates and a warm-up, in one ``Trainer.fit``; returns the
        Trainer. ``kwargs``: :func:`ftlight.recipes.fine_tune`'s options and any
        ``L.Trainer`` argument (loggers, callbacks, ...)."""
        return recipes.fine_tune(self, datamodule, epochs, freeze_epochs, **kwargs)

    # ---- losses and metrics -------------------------------------------------------------
    def _build_metrics(self) -> None:
        task = self.hparams.task
        n = self.hparams.num_classes
        kw: dict[str, Any] = {"task": task}
        if task == "multiclass":
            kw["num_classes"] = n
        elif task == "binary":  # as two classes, so that F1 is the macro average of both
            kw = {"task": "multiclass", "num_classes": 2}
        elif task == "multilabel":
            kw["num_labels"] = n

        def collection(prefix: str) -> torchmetrics.MetricCollection:
            metrics: dict[str, torchmetrics.Metric] = {
                "acc": torchmetrics.Accuracy(**kw),
                "f1": torchmetrics.F1Score(**kw, average="macro"),
            }
            if task == "multiclass" and n > 5:
                metrics["acc_top5"] = torchmetrics.Accuracy(**kw, top_k=5)
            # No compute groups: torchmetrics merges metrics whose states are equal after the
            # first batch, and a first batch of one class, all right at top-1, makes macro F1's
            # states equal top-5 accuracy's: F1 then reports top-5 statistics (F1 1.0000001
            # at 0.97 accuracy; torchmetrics #2596, #2916). Checking the groups also syncs.
            return torchmetrics.MetricCollection(metrics, prefix=prefix, compute_groups=False)

        self.train_metrics = torchmetrics.MetricCollection(
            {"acc": torchmetrics.Accuracy(**kw)}, prefix="train_", compute_groups=False
        )
        self.val_metrics = collection("val_")
        self.test_metrics = collection("test_")
        self.val_confusion = torchmetrics.ConfusionMatrix(**kw)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        task = self.hparams.task
        if task == "multiclass":
            if target.ndim == 2:
                raise ValueError(
                    f"Expected integer class labels of shape (batch,). Received one-hot or "
                    f"multi-hot labels of shape {tuple(target.shape)}; pass integer labels or "
                    "use task='multilabel'."
                )
            try:  # no range check up front: it would sync with the GPU at every step
                return F.cross_entropy(logits, target, label_smoothing=self.hparams.label_smoothing)
            except IndexError as err:  # the CPU kernel's "Target N is out of bounds"
                bad = target[(target < 0) | (target >= self.num_outputs)]
                raise ValueError(
                    f"Label {int(bad[0]) if bad.numel() else '?'} out of range for "
                    f"num_classes={self.num_outputs} (expected labels 0.."
                    f"{self.num_outputs - 1})."
                ) from err
        if task == "binary":
            return F.binary_cross_entropy_with_logits(logits.squeeze(1), target.float())
        return F.binary_cross_entropy_with_logits(logits, target.float())

    def soft_target_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy with class probabilities ``(B, C)`` (mixed labels), label smoothing
        applied to them as timm's ``Mixup`` does: ``targets * (1 - s) + s / C``."""
        return F.cross_entropy(logits, targets, label_smoothing=self.hparams.label_smoothing)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        if self.hparams.task == "multiclass":
            return logits.softmax(-1)
        probs = logits.sigmoid()
        return probs.squeeze(1) if self.hparams.task == "binary" else probs

    def _metric_input(self, logits: torch.Tensor) -> torch.Tensor:
        probs = self.probabilities(logits)
        if self.hparams.task == "binary":
            return torch.stack([1.0 - probs, probs], dim=-1)
        return probs

    # ---- steps --------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        mixed = self._mix(x, y)
        if mixed is not None:  # metrics: the dominant label of each mixed image
            x, soft = mixed
            y = soft.argmax(1)
        with _explain_batch_of_one(self, len(x)):
            logits = self(x)
        loss = self.loss(logits, y) if mixed is None else self.soft_target_loss(logits, soft)
        self.train_metrics.update(self._metric_input(logits.detach()), y)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(y))
        self.log_dict(
            self.train_metrics, prog_bar=True, on_step=False, on_epoch=True, batch_size=len(y)
        )
        return loss

    def _mix(self, x: Any, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not self.mixer.active:
            return None
        if isinstance(x, FeatureBatch):
            _warn_once(
                "mixup/cutmix mix images, and this batch holds cached backbone features: it "
                "trains unmixed (FeatureCache declines to cache while the model mixes)."
            )
            return None
        return self.mixer(x, y)

    def _tta_logits(self, x: Any) -> torch.Tensor:
        """Logits of the views' mean probabilities (``tta``), or plain logits."""
        mode = resolve_tta(self.hparams.get("tta"))
        if mode is None:
            return self(x)
        if isinstance(x, FeatureBatch):
            _warn_once(f"tta={mode!r} needs images; cached features are scored without it.")
            return self(x)
        return probabilities_to_logits(tta_probabilities(self, x, mode), self.hparams.task)

    def _eval_step(self, batch: Any, metrics: torchmetrics.MetricCollection, prefix: str):
        x, y = batch[0], batch[1]
        logits = self._tta_logits(x) if prefix == "test_" else self(x)
        loss = self.loss(logits, y)
        probs = self._metric_input(logits)
        metrics.update(probs, y)
        self.log(f"{prefix}loss", loss, prog_bar=True, batch_size=len(y), sync_dist=True)
        self.log_dict(metrics, prog_bar=True, batch_size=len(y))
        return probs, y

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        probs, y = self._eval_step(batch, self.val_metrics, "val_")
        self.val_confusion.update(probs, y)

    # Test and predict run the backbone many times with fixed weights: BatchNorm folded into
    # the convolutions saves a pass per layer (ftlight.models.fold; checked, never stale).
    def on_test_epoch_start(self) -> None:
        self.backbone.start_folded_inference()

    def on_test_epoch_end(self) -> None:
        self.backbone.stop_folded_inference()

    def on_predict_epoch_start(self) -> None:
        self.backbone.start_folded_inference()

    def on_predict_epoch_end(self) -> None:
        self.backbone.stop_folded_inference()

    def teardown(self, stage: str) -> None:
        self.backbone.stop_folded_inference()

    def on_validation_epoch_end(self) -> None:
        self.confusion_matrix = self.val_confusion.compute().cpu()
        self.val_confusion.reset()

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test_")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        mode = resolve_tta(self.hparams.get("tta"))
        if mode is not None and not isinstance(x, FeatureBatch):
            return tta_probabilities(self, x, mode)
        return self.probabilities(self(x))

    # ---- optimisation -------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        """Head at ``lr``; backbone groups at ``backbone_lr``, scaled by ``layer_decay``.

        A group named in ``group_lrs`` (set by :class:`~ftlight.callbacks.StagedUnfreeze`) uses
        that learning rate instead.
        """
        hp = self.hparams
        head_lr = numeric_lr(hp.lr)  # "auto": a placeholder until the finder has run
        backbone_lr = hp.backbone_lr if hp.backbone_lr is not None else head_lr * 0.1
        groups = []
        for g in split_decay(self.head.named_parameters(), hp.weight_decay):
            groups.append({**g, "lr": head_lr, "name": "head"})
        params = dict(self.backbone.model.named_parameters())
        no_decay = getattr(self.backbone.model, "no_weight_decay", lambda: ())()
        layer_groups = self.backbone.layer_groups
        for depth, layer_group in enumerate(layer_groups):
            scale = hp.layer_decay ** (len(layer_groups) - 1 - depth) if hp.layer_decay else 1.0
            named = [(n, params[n]) for n in layer_group.param_names]
            for g in split_decay(named, hp.weight_decay, no_decay):
                lr = self.group_lrs.get(layer_group.name, backbone_lr * scale)
                groups.append({**g, "lr": lr, "name": layer_group.name})
        return groups

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = build_optimizer(
            hp.optimizer, self.param_groups(), numeric_lr(hp.lr), momentum=hp.momentum
        )
        name = hp.get("scheduler")
        if name == "auto" and not self._may_anneal():
            return optimizer
        if name is None or name == "none":
            return optimizer
        total = int(self.trainer.estimated_stepping_batches)
        epochs = max(1, self.trainer.max_epochs or 1)
        warmup = int(hp.warmup_epochs * total / epochs)
        if name == "auto":  # cosine once on_train_start knows the head was probed, else flat
            cosine = warmup_cosine(total, warmup)
            schedule = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: cosine(step) if self.anneal else 1.0
            )
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": schedule, "interval": "step"},
            }
        return {
            "optimizer": optimizer,
            "lr_scheduler": build_scheduler(name, optimizer, total, warmup),
        }

    def _may_anneal(self) -> bool:
        """``scheduler="auto"``: whether this fit may start from a probed head (decided at
        ``on_train_start``); never beside a StagedUnfreeze or a learning-rate finder."""
        if self._staged_or_sweeping():
            return False
        return self.anneal or self.hparams.get("head_init") in ("auto", "probe")

    def _staged_or_sweeping(self) -> bool:
        """A StagedUnfreeze (its own per-group rates and warm-ups) or a learning-rate finder
        among the Trainer's callbacks: no automatic probe or schedule beside them."""
        from ftlight.callbacks.staged import StagedUnfreeze

        callbacks = self.trainer.callbacks if self._trainer is not None else []
        return any(isinstance(cb, (StagedUnfreeze, LRFinder)) for cb in callbacks)

    def _cached_train_rows(self) -> FeatureRows | None:
        """The cached (features, targets) rows the Trainer trains on, if it serves those."""
        rows = getattr(self.trainer.train_dataloader, "dataset", None)
        return rows if isinstance(rows, FeatureRows) and len(rows.tensors) >= 2 else None

    # ---- data config and checkpoints ---------------------------------------------------
    def setup(self, stage: str) -> None:
        # a test/predict that raised skipped teardown: its fold must not serve this run
        self.backbone.stop_folded_inference()
        # The model is moved to its device after setup: ask the strategy where it goes.
        device = self.trainer.strategy.root_device if self._trainer else self.device
        self.backbone.to(
            memory_format=torch.channels_last
            if self._channels_last(device)
            else torch.contiguous_format
        )
        if stage == "fit" and self.hparams.get("head_init") == "probe" and not self.head_probed:
            sweeps = [
                cb
                for cb in self.trainer.callbacks
                if isinstance(cb, LRFinder) and (not cb.only_auto or is_auto(self.hparams.lr))
            ]
            if sweeps:
                raise ValueError(_PROBE_AND_FINDER)
        if stage == "fit":
            # Frozen BatchNorm layers are in eval mode on purpose (ftlight.models.freezing):
            # Lightning's fit loop would warn about them at every start of training.
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        if self.hparams.get("torch_compile") and self.backbone.model._compiled_call_impl is None:
            self.backbone.model.compile()
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if datamodule is not None and hasattr(datamodule, "adopt_data_config"):
            datamodule.adopt_data_config(self.data_config)
            # Record what the data module really feeds (its image_size, framing) so that
            # checkpoints, predict and export preprocess exactly as training did.
            self.backbone.data_config = datamodule.data_config
            self._check_class_count(datamodule)
            self._adopt_class_names(datamodule)
        if stage == "fit" and getattr(datamodule, "augment_auto", False):
            self._settle_augment(datamodule)

    def _settle_augment(self, datamodule: Any) -> None:
        """``augment=None`` (auto): no random augmentation in a fit whose backbone is static
        from its first epoch, so that the feature cache can serve it (see ``cache_features``)."""
        cache = next((cb for cb in self.trainer.callbacks if isinstance(cb, FeatureCache)), None)
        if cache is None:
            static, why = False, "no feature cache (cache_features=False)"
        else:
            static, why = cache.static_at(self.trainer, self, self.trainer.current_epoch)
        if static:
            why = "the backbone is frozen in the first epoch"
        datamodule.settle_augment(not static, str(why))

    def _adopt_class_names(self, datamodule: Any) -> None:
        """Take the data's class names; refuse names that disagree with the data's order."""
        names = getattr(datamodule, "class_names", None)
        if not names or self.hparams.task == "multilabel":
            return
        if self.class_names is None:
            self.class_names = list(names)
        elif list(self.class_names) != list(names):
            raise ClassNamesMismatchError(
                f"class_names={list(self.class_names)} disagree with the data's classes "
                f"{list(names)} (label i is the data's i-th class). Pass the data's names in "
                "that order, or leave class_names unset to take them from the data."
            )

    def _check_class_count(self, datamodule: Any) -> None:
        """The data's class count must be what the head was built for (not multilabel)."""
        task, n_model = self.hparams.task, self.hparams.num_classes
        n_data = getattr(datamodule, "num_classes", None)
        if task == "multilabel" or not isinstance(n_data, int):
            return
        expected = 2 if task == "binary" else n_model
        if n_data != expected:
            names = getattr(datamodule, "class_names", None)
            raise ValueError(
                f"The data has {n_data} classes {names} but the model was built for {expected} "
                f"(num_classes={n_model}, task={task!r}). Build the model with "
                "num_classes=datamodule.num_classes (the CLI links them), or check the data."
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Plain Python types only: the checkpoint must load with torch.load(weights_only=True)
        # (from_checkpoint, and Lightning's own resume) without unpickling anything else.
        checkpoint["ftlight"] = _plain(
            {
                "backbone": self.backbone.name,
                "class_names": self.class_names,
                "data_config": self.data_config.to_dict(),
                "weights_info": self.weights_info.to_dict(),
                "frozen": list(self.frozen_names),
            }
        )
        # The weights are in the state dict: rebuilding must not fetch them again.
        hparams = _plain(dict(checkpoint.get("hyper_parameters", {})))
        hparams["weights"] = None
        hparams["class_names"] = _plain(self.class_names)
        checkpoint["hyper_parameters"] = hparams
        checkpoint["ftlight"]["head_probed"] = bool(self.head_probed)
        checkpoint["ftlight"]["anneal"] = bool(self.anneal)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get("ftlight", {})
        self.head_probed = bool(meta.get("head_probed", False))
        self.anneal = bool(meta.get("anneal", False))
        saved = meta.get("class_names")
        # Runs before the weights load: the data's names (from setup) vs the checkpoint's.
        multilabel = self.hparams.task == "multilabel"
        if saved and self.class_names and not multilabel and list(saved) != self.class_names:
            raise ClassNamesMismatchError(
                f"The checkpoint was trained on the classes {list(saved)} but the data has "
                f"{list(self.class_names)}; label i means the i-th class, so every prediction "
                "would be mislabelled. Use data with the checkpoint's classes, in that order."
            )
        if saved:
            self.class_names = list(saved)
        # Compared at on_train_start with this module's settings (see _apply_optimizer_hparams).
        self._checkpoint_hparams = dict(checkpoint.get("hyper_parameters", {}))
        saved_lr = self._checkpoint_hparams.get("lr")
        if is_auto(self.hparams.get("lr")) and not is_auto(saved_lr) and saved_lr is not None:
            self.hparams.lr = float(saved_lr)  # found by the finder before: never sweep again
        if meta.get("data_config"):
            self.backbone.data_config = DataConfig.from_dict(meta["data_config"])
        if meta.get("weights_info"):
            from ftlight.models.weights import WeightsInfo

            self.backbone.weights_info = WeightsInfo(**meta["weights_info"])

    def probe_head(self, features: torch.Tensor, targets: torch.Tensor) -> float:
        """Fit the linear head to backbone ``features`` and their ``targets`` with this
        module's loss (see ``head_init="probe"``); returns the fitted loss."""
        loss = fit_linear_probe(linear_head(self.head), features, targets, self.loss)
        self.head_probed = True
        return loss

    def on_train_start(self) -> None:
        if keep_group_ratios(self):  # a learning-rate finder's sweep: keep the groups' ratios
            return
        mode = self.hparams.get("head_init")
        probe = self.trainer.global_step == 0 and not self.head_probed  # once per module:
        probe = probe and (mode == "probe" or (mode == "auto" and self._auto_probe_rows()))
        if probe:  # not on resume, a second fit or a module from a checkpoint
            self._probe_cached_rows()
        if self.trainer.global_step == 0:  # scheduler="auto": a fit from the probe anneals
            auto = self.hparams.get("scheduler") == "auto"
            self.anneal = bool(probe) and auto and self._may_anneal()
            if self.anneal:
                rank_zero_info(
                    f"scheduler='auto': cosine from lr={self.hparams.get('lr')} to 0 over this "
                    "fit (the head starts from the linear probe; scheduler=None keeps the rate)."
                )
        self._apply_optimizer_hparams()

    def _auto_probe_rows(self) -> bool:
        """``head_init="auto"``: whether the probe can fit the head on cached training rows
        (linear head, numeric lr, no finder and no StagedUnfreeze, within
        ``PROBE_AUTO_BUDGET``). Staged runs (``fine_tune``, the staged configs) keep a random
        head: their frozen phase trains it for epochs, and under DDP their gated groups turn
        caching off, so a probe on one process only would make one process and several
        start differently."""
        rows = self._cached_train_rows()
        if rows is None or is_auto(self.hparams.get("lr")) or self._staged_or_sweeping():
            return False
        try:
            linear = linear_head(self.head)
        except ValueError:
            return False
        return len(rows) * linear.in_features * linear.out_features <= PROBE_AUTO_BUDGET

    def _probe_cached_rows(self) -> None:
        """``head_init="probe"``: fit the head on the cached training rows the Trainer holds
        (FeatureCache's hooks ran before this one), or say why there are none."""
        trainer = self.trainer
        rows = self._cached_train_rows()
        if rows is None:
            cache = next((cb for cb in trainer.callbacks if isinstance(cb, FeatureCache)), None)
            if cache is not None and cache.reason:
                why = cache.reason
            elif self.hparams.get("cache_features") is False:
                why = "cache_features=False"
            else:
                why = "no FeatureCache callback runs"
            raise ValueError(
                "head_init='probe' fits the head on cached features of the frozen backbone "
                f"before the first step, but feature caching is off: {why}. Freeze the "
                "backbone (freeze=True) with cache_features left on, or use head_init='random'."
            )
        loss = self.probe_head(rows.tensors[0], rows.tensors[1])
        # every rank fits the same rows, but float reductions may differ between devices, and
        # DDP never re-syncs parameters: every rank starts from rank 0's head
        if trainer.world_size > 1:
            for tensor in [*self.head.parameters(), *self.head.buffers()]:
                tensor.data.copy_(trainer.strategy.broadcast(tensor.data.cpu(), src=0))
        rank_zero_info(
            f"head_init={self.hparams.get('head_init')!r}: head fitted by a linear probe on "
            f"{len(rows)} cached training rows (loss {loss:.4f})."
        )

    def _apply_optimizer_hparams(self) -> None:
        """On resume, apply this module's learning rates and weight decay to the restored optimizer.

        Lightning restores the optimizer's state with the checkpoint's learning rates; a resume
        with a new ``lr`` (the advice after a NaN loss) must train at the new rate. Only settings
        that differ from the checkpoint's are touched, so an unchanged resume (and the LR
        schedule it restored) stays exact. Scheduler bases scale with the learning rate.
        """
        saved = self.__dict__.pop("_checkpoint_hparams", None)
        hp = self.hparams
        if not saved or all(saved.get(k, hp.get(k)) == hp.get(k) for k in OPTIMIZER_HPARAMS):
            return
        fresh = self.param_groups()
        optimizer = self.trainer.optimizers[0] if self.trainer.optimizers else None
        if optimizer is None or len(optimizer.param_groups) != len(fresh):
            return
        schedulers = [
            c.scheduler
            for c in self.trainer.lr_scheduler_configs
            if c.scheduler.optimizer is optimizer
        ]
        for i, (group, new) in enumerate(zip(optimizer.param_groups, fresh, strict=True)):
            # The group's configured rate: OneCycleLR's max_lr, a scheduler's base, or the lr.
            base = group.get("max_lr") or (schedulers[0].base_lrs[i] if schedulers else group["lr"])
            ratio = new["lr"] / base if base else 1.0
            for key in ("lr", "initial_lr", "max_lr", "min_lr"):
                if key in group:
                    group[key] *= ratio
            for scheduler in schedulers:
                scheduler.base_lrs[i] *= ratio
            if "weight_decay" in group:
                group["weight_decay"] = new["weight_decay"]
            if "momentum" in group and hp.optimizer.lower() == "sgd":  # the others: no momentum
                group["momentum"] = hp.momentum

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, map_location: Any = "cpu", *, trust_pickle: bool = False
    ) -> FineTuner:
        """Load a checkpoint for inference (eval mode); loading never runs code from the file.

        A file that is not an ftlight checkpoint (empty, truncated, a state dict, pickled
        objects, ...) raises :class:`ftlight.files.UnreadableFileError` saying what it is;
        ``trust_pickle=True`` unpickles a trusted file holding other Python objects.
        """
        what = "an ftlight checkpoint (a .ckpt written by `ftlight fit` or Trainer.save_checkpoint)"
        checkpoint = load_torch_file(path, what=what, trust_pickle=trust_pickle)
        if not isinstance(checkpoint, dict) or not {"state_dict", "hyper_parameters"} <= set(
            checkpoint
        ):
            keys = sorted(checkpoint)[:6] if isinstance(checkpoint, dict) else type(checkpoint)
            raise UnreadableFileError(
                f"{path} is a PyTorch file but not {what}: it has no state_dict and "
                f"hyper_parameters (found {keys}). Backbone weights (a state dict) are used "
                "with FineTuner(weights=PATH) (command line: --model.weights PATH)."
            )
        accepted = inspect.signature(cls.__init__).parameters
        hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if k in accepted}
        # The state dict holds every weight: never follow a weights path or hub name from it.
        hparams["weights"] = None
        _check_state_dict_fits(cls, hparams, checkpoint["state_dict"], path)
        model = cls(**hparams)
        model.on_load_checkpoint(checkpoint)
        model.load_state_dict(checkpoint["state_dict"])
        return model.to(map_location).eval()


_PROBE_AND_FINDER = (
    "head_init='probe' with a learning-rate finder (lr='auto' or an LRFinder callback): the "
    "finder sweeps before the probe is fitted, so it would pick a rate for the random head and "
    "training would start from the probed one. Give a numeric lr (1e-3 measured on digits "
    "after the probe) or use head_init='random'."
)


def _check_lr_and_ema(lr: Any, backbone_lr: Any, ema_decay: Any) -> None:
    if isinstance(lr, str) and not is_auto(lr):
        raise ValueError(f"lr must be a number or 'auto'. Received: {lr!r}")
    refuse_auto_with_backbone_lr(lr, backbone_lr)
    if ema_decay is not None and not 0.0 < ema_decay < 1.0:
        raise ValueError(
            f"ema_decay must be between 0 and 1 (exclusive), e.g. 0.999. Received: {ema_decay}"
        )


def _fit_callbacks(module: FineTuner, trainer: Any) -> list[L.Callback]:
    """The learning-rate finder (``lr="auto"``) and EMA (``ema_decay``), for ``fit`` only."""
    from lightning.pytorch.trainer.states import TrainerFn

    if trainer is None or trainer.state.fn != TrainerFn.FITTING:
        return []
    from ftlight.callbacks.ema import EMA

    out: list[L.Callback] = []
    hp = module.hparams
    if is_auto(hp.get("lr")) and not any(isinstance(cb, LRFinder) for cb in trainer.callbacks):
        out.append(LRFinder(only_auto=True))
    decay = hp.get("ema_decay")
    if decay is not None and not any(isinstance(cb, EMA) for cb in trainer.callbacks):
        out.append(EMA(decay=decay))
    return out


def _check_state_dict_fits(
    cls: type[FineTuner], hparams: dict[str, Any], state_dict: Any, path: Any
) -> None:
    """Build the model the hyperparameters describe on the meta device (no memory) and
    compare its tensors with the file's, so that a checkpoint whose hyperparameters ask for a
    huge head, or whose tensors fit another model, is named in one line before anything is
    allocated."""
    if not isinstance(state_dict, dict):
        raise UnreadableFileError(f"{path}: its state_dict is a {type(state_dict).__name__}.")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in cls(**hparams).state_dict().items()}
    found = {k: tuple(getattr(v, "shape", ())) for k, v in state_dict.items()}
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    reshaped = [
        f"{k} {found[k]} (model: {expected[k]})"
        for k in expected
        if k in found and found[k] != expected[k]
    ]
    if missing or unexpected or reshaped:
        problems = [
            f"{len(keys)} {label}: {keys[:3]}"
            for label, keys in (
                ("missing", missing),
                ("unexpected", unexpected),
                ("of another shape", reshaped),
            )
            if keys
        ]
        raise UnreadableFileError(
            f"{path} holds tensors that do not fit the model its hyperparameters describe "
            f"(backbone {hparams.get('backbone')!r}, {hparams.get('num_classes')} classes): "
            f"{'; '.join(problems)}. Expected a checkpoint written by ftlight fit, unchanged."
        )


def _plain(value: Any) -> Any:
    """``value`` with NumPy scalars, paths and str/int/float subclasses as plain Python types."""
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, (os.PathLike, str)):
        return os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    if isinstance(value, bool) or value is None:
        return value
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0 and not torch.is_tensor(value):
        return value.item()  # a NumPy scalar
    if isinstance(value, (int, float)):
        return int(value) if isinstance(value, int) else float(value)
    return value


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, stacklevel=3)


@contextmanager
def _explain_batch_of_one(model: nn.Module, batch_size: int) -> Iterator[None]:
    """For a training batch of one image: name the BatchNorm layer that cannot train on it
    (instead of torch's bare 'Expected more than 1 value per channel when training')."""
    if batch_size != 1:
        yield
        return

    def check(name: str):
        def hook(module: _BatchNorm, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0]
            training = module.training or module.running_mean is None
            if training and x.ndim >= 2 and x.numel() == x.shape[1]:
                raise ValueError(
                    f"A training batch of 1 image reaches the BatchNorm layer '{name}' "
                    f"({type(module).__name__}) in training mode, which needs more than one "
                    "value per channel. Train with batches of at least 2 images "
                    "(ImageDataModule(batch_size=...), --data.batch_size; a data set of one "
                    "image needs more images), or keep BatchNorm in inference mode "
                    "(bn='inference', --model.bn inference; head_batchnorm=False for the head)."
                )

        return hook

    handles = [
        m.register_forward_pre_hook(check(n))
        for n, m in model.named_modules()
        if isinstance(m, _BatchNorm)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
