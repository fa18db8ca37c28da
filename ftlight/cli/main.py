"""The ``ftlight`` command line: LightningCLI ``fit/validate/test`` plus ``predict``,
``export``, ``demo`` and ``report``.

``ftlight fit --config resnet50 --data.root my_images/`` trains with a bundled config
(``ftlight/configs/<name>.yaml``; a path to any YAML works too). The data's class count and
names flow to the model; the backbone's preprocessing (input size, mean/std, interpolation)
flows to the data module when the model is set up (``FineTuner.setup``).

Each run writes its own folder, ``<default_root_dir>/logs/version_N/`` (Lightning's layout):
``checkpoints/last.ckpt`` (the newest state), ``checkpoints/best-*.ckpt``, ``metrics.csv``,
``config.yaml``. ``--ckpt_path last`` resumes from the ``last.ckpt`` of the highest-numbered
run that has one; the resumed run gets a new ``version_N``.

Every subcommand ends the same way (:mod:`ftlight.cli.errors`): known errors (bad data,
missing files, unavailable weights, other classes, ...) print one ``ftlight: error: ...`` line
and exit with code 1, command-line usage mistakes exit with code 2; ``--debug`` (or
``FTLIGHT_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import importlib
import importlib.util
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from ftlight.cli.errors import EXIT_USAGE, debug_enabled, print_error, summary
from ftlight.data.io import DataFolderNotFoundError

CONFIG_DIR = Path(__file__).parents[1] / "configs"
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test")
OWN_SUBCOMMANDS = {
    "demo": "ftlight.cli.demo",
    "report": "ftlight.cli.report",
    "predict": "ftlight.cli.predict",
    "export": "ftlight.cli.export",
    "lr-find": "ftlight.cli.lr_find",
}

USAGE = """usage: ftlight {{fit,validate,test,predict,export,demo,report,lr-find}} ...

  fit        train (LightningCLI); e.g. ftlight fit --config resnet50 --data.root imgs/
  validate   evaluate a checkpoint on the validation split (LightningCLI)
  test       evaluate a checkpoint on the test split (LightningCLI)
  predict    top-k predictions for a folder or files -> CSV
  export     torch.export / ONNX (or TorchScript) with preprocessing and class names
  demo       offline transfer-learning demo
  report     summarise a run directory (or the newest run under a default_root_dir)
  lr-find    learning-rate range test with fit's arguments: suggestion, plot, points

Bundled configs: {configs}
Run `ftlight <command> --help` for the options of a command. Every command ends a known
error with one `ftlight: error: ...` line and exit code 1 (`--debug` or FTLIGHT_DEBUG=1 shows
the traceback); a command-line mistake prints the usage and exits with 2.
"""


def bundled_configs() -> list[str]:
    """Names of the YAML configs shipped in ``ftlight/configs``."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config(value: str) -> str:
    """A bundled config name (``resnet50``) -> its path; paths and inline YAML pass through."""
    if Path(value).exists() or "\n" in value or ":" in value:
        return value
    candidate = CONFIG_DIR / f"{value.removesuffix('.yaml')}.yaml"
    if candidate.exists():
        return str(candidate)
    raise SystemExit(
        f"ftlight: error: --config {value}: neither a file nor a bundled config "
        f"(resolved to {Path(value).absolute()}). Bundled configs: {bundled_configs()}"
    )


def _resolve_config_args(argv: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-c", "--config") and i + 1 < len(argv):
            out += [arg, resolve_config(argv[i + 1])]
            i += 2
            continue
        if arg.startswith("--config="):
            arg = "--config=" + resolve_config(arg.split("=", 1)[1])
        out.append(arg)
        i += 1
    return out


class CheckpointError(ValueError):
    """A checkpoint given to the command line cannot be read."""


class LatestCheckpoint(ModelCheckpoint):
    """``last.ckpt``: the newest state at every save trigger, whether or not a metric improved.

    Lightning 2.6's ``ModelCheckpoint(save_last=True)`` rewrites ``last.ckpt`` at an epoch end
    only when the same step also saved a top-k checkpoint (and ``save_last="link"`` points it
    at the latest top-k file), so once ``val_loss`` stops improving ``last`` falls behind and
    ``--ckpt_path last`` silently re-trains from an older epoch. This callback monitors
    nothing and keeps one file, ``last.ckpt``; the CLI adds it with the triggers of
    ``--checkpoint.*`` (every epoch, or every ``every_n_train_steps``) when ``save_last`` is on.
    """

    def __init__(
        self,
        dirpath: str | None = None,
        *,
        every_n_train_steps: int | None = None,
        every_n_epochs: int | None = None,
        train_time_interval: Any = None,
        save_on_train_epoch_end: bool | None = None,
        save_weights_only: bool = False,
    ) -> None:
        super().__init__(
            dirpath=dirpath,
            filename=self.CHECKPOINT_NAME_LAST,
            monitor=None,
            save_top_k=1,
            save_weights_only=save_weights_only,
            every_n_train_steps=every_n_train_steps,
            every_n_epochs=every_n_epochs,
            train_time_interval=train_time_interval,
            save_on_train_epoch_end=save_on_train_epoch_end,
            enable_version_counter=False,
        )


def run_folders(root: str | os.PathLike) -> list[Path]:
    """The runs under ``root``: ``root/logs/version_N`` folders in the order of N."""
    logs = Path(root) / "logs"
    found = []
    if logs.is_dir():
        for path in logs.iterdir():
            number = path.name.removeprefix("version_")
            if path.is_dir() and path.name.startswith("version_") and number.isdigit():
                found.append((int(number), path))
    return [path for _, path in sorted(found)]


def next_run_folder(root: str | os.PathLike) -> Path:
    """``root/logs/version_N`` for a new run (one more than the highest N there)."""
    folders = run_folders(root)
    number = int(folders[-1].name.removeprefix("version_")) + 1 if folders else 0
    return Path(root) / "logs" / f"version_{number}"


def find_last_checkpoint(root: str | os.PathLike) -> Path | None:
    """``--ckpt_path last``: the ``last.ckpt`` of the highest-numbered run that has one."""
    for folder in reversed(run_folders(root)):
        path = folder / "checkpoints" / "last.ckpt"
        if path.is_file():
            return path
    return None


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's contents, loaded without running code (``weights_only=True``); a file
    that is not one is named in one line (:class:`~ftlight.files.UnreadableFileError`)."""
    from ftlight.files import load_torch_file

    checkpoint = load_torch_file(
        path,
        what="a checkpoint written by `ftlight fit` (.ckpt)",
        opt_in="its tensors, re-saved as a state dict, to a new run as --model.weights "
        "(resuming reads only what ftlight fit wrote)",
        mmap=True,
    )
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"{path} is a PyTorch file, but not a checkpoint (no state_dict): expected a .ckpt "
            "written by ftlight fit."
        )
    return checkpoint


# Model settings that define the network or its optimizer's state: on resume, the checkpoint's.
STRUCTURAL_HPARAMS = (
    "backbone",
    "task",
    "hidden",
    "dropout",  # a Dropout layer shifts the head's state-dict keys
    "activation",
    "head_batchnorm",
    "keep_fc",
    "image_size",
    "freeze",
    "optimizer",
    "scheduler",
)
# Settings the data decides (linked) or a checkpoint replaces (its weights).
LINKED_HPARAMS = ("num_classes", "class_names", "weights")


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _show(value: Any) -> str:
    import json

    value = _plain(value)
    return value if isinstance(value, str) else json.dumps(value)


def reconcile_with_checkpoint(
    model: Any, defaults: Any, saved: dict[str, Any], argv: Sequence[str], *, resuming: bool
) -> list[str]:
    """Make the ``--model.*`` settings agree with a checkpoint's; a note per overridden flag.

    A setting the user did not give (not on the command line, and at its default) takes the
    checkpoint's value: the run continues the same model. A given one that defines the model
    or its optimizer state (``STRUCTURAL_HPARAMS``) is ignored in favour of the checkpoint's;
    the others (learning rates, dropout, ...) are used, and reported.
    """
    from ftlight.finetuner import OPTIMIZER_HPARAMS

    notes = []
    for key, old in saved.items():
        if key.startswith("_") or key in LINKED_HPARAMS or key not in model:
            continue
        new = model[key]
        if _plain(new) == _plain(old):
            continue
        if key == "lr" and new == "auto" and not isinstance(old, str):
            model[key] = old  # the finder ran in that run: its rate, never a new sweep
            notes.append(f"--model.lr=auto: the checkpoint's lr {_show(old)} (found then) is used.")
            continue
        flag = f"--model.{key}"
        on_command_line = any(a == flag or a.startswith(flag + "=") for a in argv)
        given = on_command_line or _plain(new) != _plain(defaults.get(key))
        if key in STRUCTURAL_HPARAMS or not given:
            model[key] = old
            if given:
                notes.append(
                    f"{flag}={_show(new)} is ignored: the checkpoint's {_show(old)} is used (it "
                    "defines the network or its optimizer state; start a new run to change it)."
                )
            continue
        note = f"{flag}={_show(new)} is used (the checkpoint had {_show(old)})"
        if resuming and key in OPTIMIZER_HPARAMS:
            note += "; applied to the restored optimizer"
        notes.append(note + ".")
    return notes


def _config_given(argv: Sequence[str]) -> bool:
    return any(a in ("-c", "--config") or a.startswith("--config=") for a in argv)


class ShowTrainTransforms(Callback):
    """Print the training transforms once the data module has the model's preprocessing."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        if not trainer.is_global_zero or not hasattr(datamodule, "transform_for"):
            return
        transform = datamodule.transform_for("train")
        steps = getattr(transform, "transforms", [transform])
        shown = ", ".join(" ".join(repr(t).split()) for t in steps)
        if getattr(datamodule, "augment", True):
            hint = (
                "--data.augment false: no random crop or flip; --data.hflip false: no "
                "horizontal flips, e.g. for digits or text"
            )
        else:
            hint = "no augmentation; --data.augment true adds random crops and flips"
        print(f"ftlight: train transforms: {shown} ({hint})", flush=True)


def _lightning_cli_class() -> type:
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

    from ftlight.callbacks.guards import AtomicCheckpointIO, NonFiniteLossGuard
    from ftlight.callbacks.staged import StagedUnfreeze

    class ShortUsageParser(LightningArgumentParser):
        """A usage mistake is three lines, not the 100-line usage of every option, and an
        unknown flag close to a known one names it."""

        def print_usage(self, file: Any = None) -> None:
            print(f"usage: {self.prog} [options]", file=file or sys.stdout)

        def error(self, message: str, ex: Exception | None = None) -> Any:
            parser = getattr(ex, "subcommand_parser", None) or self
            unknown = message.partition("unrecognized arguments: ")[2].split()
            if unknown and unknown[0].startswith("--"):
                flag = unknown[0].partition("=")[0]
                known = [o for o in parser._option_string_actions if o.startswith("--")]
                close = difflib.get_close_matches(flag, known, n=1, cutoff=0.8)
                if close:
                    message += f" (did you mean {close[0]}?)"
            return super().error(message, ex)

    class FtlightCLI(LightningCLI):
        """LightningCLI with ftlight's links, checkpointing and logging defaults."""

        # This run's folder, root/logs/version_N (None with a logger of the user's own).
        run_dir: Path | None = None

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, parser_class=ShortUsageParser, **kwargs)

        def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
            parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
            parser.link_arguments("data.class_names", "model.class_names", apply_on="instantiate")
            parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
            parser.set_defaults(
                {
                    "checkpoint.monitor": "val_loss",
                    "checkpoint.mode": "min",
                    "checkpoint.save_last": True,
                    "checkpoint.save_top_k": 1,
                    "checkpoint.filename": "best-{epoch}-{step}",
                }
            )
            parser.add_lightning_class_args(StagedUnfreeze, "staged")

        def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
            """Parse, then settle ``--ckpt_path`` before LightningCLI reads the checkpoint.

            LightningCLI (2.6) then overwrites every ``--model.*`` value with the checkpoint's
            hyper-parameters, silently; the values given are kept here and reconciled with the
            checkpoint in :meth:`before_instantiate_classes`.
            """
            super().parse_arguments(parser, args)
            subcommand = self.config.get("subcommand")
            config = self.config[subcommand] if subcommand else self.config
            self.checkpoint_hparams: dict[str, Any] | None = None
            if subcommand not in LIGHTNING_SUBCOMMANDS:
                return
            self.given_model = copy.deepcopy(config.model)
            ckpt = self._resolve_ckpt_path(config, subcommand)
            if ckpt is not None:
                self.checkpoint_hparams = dict(read_checkpoint(ckpt).get("hyper_parameters", {}))

        def before_instantiate_classes(self) -> None:
            config = self.config[self.subcommand] if self.subcommand else self.config
            root = Path(config.trainer.default_root_dir or ".")
            if config.trainer.logger in (None, True, False):
                type(self).run_dir = next_run_folder(root)
            argv = sys.argv[1:]
            if self.checkpoint_hparams is not None:
                # Evaluating or resuming: the checkpoint's weights replace the backbone's, so
                # never download them (a resume must work offline); its settings win.
                config.model = self.given_model
                defaults = self._parser(self.subcommand).get_defaults().model
                notes = reconcile_with_checkpoint(
                    config.model,
                    defaults,
                    self.checkpoint_hparams,
                    argv,
                    resuming=self.subcommand == "fit",
                )
                what = "resume" if self.subcommand == "fit" else self.subcommand
                for note in notes:
                    print(f"ftlight: {what}: {note}", file=sys.stderr, flush=True)
                config.model.weights = None
            elif (
                self.subcommand == "fit"
                and not _config_given(argv)
                and config.model.weights is None
            ):
                print(
                    "ftlight: warning: no --config given, so the model starts from random "
                    f"weights (--model.backbone {config.model.backbone}, --model.weights null). "
                    f"The bundled configs start from pre-trained weights: "
                    f"{', '.join(bundled_configs())} (e.g. ftlight fit --config "
                    "efficientnet_lite0 --data.root DIR).",
                    file=sys.stderr,
                    flush=True,
                )
            elif self.subcommand in ("validate", "test") and not config.get("ckpt_path"):
                print(
                    f"ftlight: warning: {self.subcommand} without --ckpt_path scores the model "
                    "as built (its new head is untrained); pass --ckpt_path CKPT (or last) to "
                    "score a trained run.",
                    file=sys.stderr,
                    flush=True,
                )

        def _resolve_ckpt_path(self, config: Any, subcommand: str) -> Path | None:
            """``--ckpt_path``: ``last`` -> the newest run's ``last.ckpt``; a missing file is an
            error. ``None`` when there is no file to read (no checkpoint, or Lightning's own
            ``best``/``hpc``/remote paths)."""
            value = config.get("ckpt_path")
            root = Path(config.trainer.default_root_dir or ".")
            if not value or value in ("best", "hpc", "registry") or "://" in str(value):
                return None
            if value == "last":
                dirpath = config.get("checkpoint") and config.checkpoint.dirpath
                path = Path(dirpath) / "last.ckpt" if dirpath else find_last_checkpoint(root)
                where = dirpath or f"{root / 'logs'}/version_*/checkpoints"
                if path is None or not path.is_file():
                    if subcommand != "fit":
                        raise FileNotFoundError(f"--ckpt_path last: no last.ckpt in {where}.")
                    print(
                        f"ftlight: --ckpt_path last: no last.ckpt in {where}; starting a new run.",
                        file=sys.stderr,
                        flush=True,
                    )
                    config.ckpt_path = None
                    return None
                verb = "resuming from" if subcommand == "fit" else "evaluating"
                print(f"ftlight: {verb} {path} (--ckpt_path last)", file=sys.stderr, flush=True)
                config.ckpt_path = str(path)
                return path
            path = Path(value)
            if not path.is_file():
                raise FileNotFoundError(f"--ckpt_path {value}: no such checkpoint file.")
            return path

        def instantiate_trainer(self, **kwargs: Any):
            config = self.config[self.subcommand] if self.subcommand else self.config
            run_dir = type(self).run_dir
            if config.trainer.logger in (None, True) and run_dir is not None:
                kwargs["logger"] = default_loggers(
                    config.trainer.default_root_dir or ".",
                    version=int(run_dir.name.removeprefix("version_")),
                )
            if not config.trainer.get("plugins"):
                kwargs.setdefault("plugins", [AtomicCheckpointIO()])
            trainer = super().instantiate_trainer(**kwargs)
            history = _metrics_history()
            if history is not None:
                trainer.callbacks.append(history)
            if self.subcommand == "fit":
                trainer.callbacks.append(ShowTrainTransforms())
            checkpoint = self._get(self.config_init, "checkpoint")
            if isinstance(checkpoint, ModelCheckpoint) and checkpoint in trainer.callbacks:
                if checkpoint.dirpath is None and config.trainer.logger is False and run_dir:
                    checkpoint.dirpath = str(run_dir / "checkpoints")
                if checkpoint.save_last:
                    options = config.checkpoint
                    trainer.callbacks.append(
                        LatestCheckpoint(
                            checkpoint.dirpath,
                            every_n_train_steps=options.every_n_train_steps,
                            every_n_epochs=options.every_n_epochs,
                            train_time_interval=options.train_time_interval,
                            save_on_train_epoch_end=options.save_on_train_epoch_end,
                            save_weights_only=options.save_weights_only,
                        )
                    )
                    checkpoint.save_last = False
            if not any(isinstance(cb, NonFiniteLossGuard) for cb in trainer.callbacks):
                # Before the checkpoint callbacks, so that bad weights are never saved.
                trainer.callbacks.insert(0, NonFiniteLossGuard())
            return trainer

    return FtlightCLI


def _metrics_history() -> Any:
    """ftlight.cli.report's per-epoch history callback."""
    from ftlight.cli.report import MetricsHistory

    return MetricsHistory()


def default_loggers(root: str, version: int | None = None) -> list[Any]:
    """TensorBoard (a default dependency) and CSV loggers writing into one Lightning version
    folder, ``<root>/logs/version_N/`` (events file, ``metrics.csv``, ``hparams.yaml``).

    TensorBoard is left out, not an error, when the package is missing.
    """
    from lightning.pytorch.loggers import CSVLogger

    csv = CSVLogger(root, name="logs", version=version)
    loggers: list[Any] = [csv]
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(
            TensorBoardLogger(root, name="logs", version=csv.version, default_hp_metric=False)
        )
    return loggers


def write_metrics_json(cli: Any, log_dir: Path) -> Path:
    """``metrics.json`` (final metrics, per-epoch history, confusion matrix) for reports.

    The confusion matrix and mistakes are those of the weights in memory at the end (the final
    epoch, ``last.ckpt``) and say so under ``evaluation``; when the checkpoint callback's best
    checkpoint holds other weights, ``best`` has its own confusion matrix and mistakes.
    """
    import json

    import torch

    from ftlight.files import atomic_write

    trainer, model = cli.trainer, cli.model
    record: dict[str, Any] = {
        k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1
    }
    record["backbone"] = model.backbone.name
    record["epochs_run"] = int(trainer.current_epoch)
    history = next((cb for cb in trainer.callbacks if hasattr(cb, "epochs")), None)
    if history is not None:
        record["epochs"] = list(history.epochs)
    record["class_names"] = model.class_names
    ckpt = trainer.checkpoint_callback
    step = int(trainer.global_step)

    def load(path: str) -> dict[str, Any] | None:
        if not Path(path).is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # training is over: say so, but never fail the run for this
            print(f"ftlight: report: cannot read {path}: {err}", file=sys.stderr, flush=True)
            return None

    last = getattr(ckpt, "last_model_path", "") or ""
    saved_last = load(last)
    record["evaluation"] = {
        "split": "validation",
        "weights": "final",
        "epoch": max(0, int(trainer.current_epoch) - 1),
        "global_step": step,
        # Named only when it really holds the final state.
        "checkpoint": last if saved_last and saved_last["global_step"] == step else None,
    }
    final = validation_confusion_and_mistakes(model, cli.datamodule)
    if final is not None:
        record["confusion_matrix"] = final["confusion_matrix"]
        record["mistakes"] = final["mistakes"]
        record["mistakes_split"] = "validation"
    elif model.confusion_matrix is not None:
        record["confusion_matrix"] = model.confusion_matrix.tolist()
    if "confusion_matrix" in record:
        record["confusion_split"] = "validation"
    best_path = getattr(ckpt, "best_model_path", "") or ""
    if best_path:
        record["best_checkpoint"] = best_path
    best = load(best_path) if best_path else None
    if best is not None:
        score = getattr(ckpt, "best_model_score", None)
        record["best"] = {
            "checkpoint": best_path,
            "monitor": getattr(ckpt, "monitor", None),
            "score": None if score is None else float(score),
            "epoch": int(best["epoch"]),
            "global_step": int(best["global_step"]),
            "same_as_final": int(best["global_step"]) == step,
        }
        if not record["best"]["same_as_final"]:
            # Evaluate the best weights in the same model, then put the final ones back.
            final_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            model.load_state_dict(best["state_dict"])
            try:
                evaluated = validation_confusion_and_mistakes(model, cli.datamodule)
            finally:
                model.load_state_dict(final_state)
            if evaluated is not None:
                record["best"].update(evaluated)
    path = log_dir / "metrics.json"
    atomic_write(path, json.dumps(record, indent=2))
    from lightning.pytorch.loggers import TensorBoardLogger

    boards = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
    if boards:  # the pictures next to the scalars
        import matplotlib.pyplot as plt

        from ftlight.cli.report import report_figures

        at = max(0, step - 1)  # where Lightning logs the last epoch's scalars (its last batch)
        for tag, figure in report_figures(record).items():
            for board in boards:
                board.experiment.add_figure(tag, figure, global_step=at, close=False)
            plt.close(figure)
        for board in boards:  # Lightning closed the writer at the end of fit: close again
            board.experiment.close()
    return path


def validation_confusion_and_mistakes(
    model: Any, datamodule: Any, k: int = 16
) -> dict[str, Any] | None:
    """Confusion matrix and the ``k`` most confident mistakes of ``model`` on a folder's
    validation split, in one pass (``None``: no files, or a multilabel task)."""
    import torch

    from ftlight.cli.predict import predict_probabilities
    from ftlight.cli.report import worst_mistakes

    dataset = getattr(datamodule, "datasets", {}).get("val")
    samples = getattr(dataset, "samples", None)
    names = model.class_names
    if not samples or not names or model.hparams.task == "multilabel":
        return None
    was_training = model.training
    with torch.no_grad():
        probs = predict_probabilities(
            model, [path for path, _ in samples], batch_size=datamodule.batch_size
        )
    model.train(was_training)
    truth = torch.tensor([label for _, label in samples])
    n = len(names)
    confusion = torch.bincount(truth * n + probs.argmax(1), minlength=n * n).reshape(n, n)
    return {
        "confusion_matrix": confusion.tolist(),
        "mistakes": worst_mistakes(
            [path for path, _ in samples], truth.tolist(), probs, names, k=k
        ),
    }


def _summarise(cli: Any) -> None:
    """Print where checkpoints and metrics are (only files that exist), then the run report."""
    trainer = cli.trainer
    if not trainer.is_global_zero:
        return
    lines = ["", "ftlight: run finished."]
    if cli.subcommand == "fit":
        callbacks = trainer.checkpoint_callbacks
        for folder in dict.fromkeys(cb.dirpath for cb in callbacks if cb.dirpath):
            if os.path.isdir(folder):
                lines.append(f"  checkpoints: {folder}")
        for cb in callbacks:
            is_latest = isinstance(cb, LatestCheckpoint)
            path = cb.best_model_path if is_latest else getattr(cb, "best_model_path", "")
            if path and os.path.isfile(path):
                lines.append(f"    {'last' if is_latest else 'best'}: {path}")
    else:
        ckpt = cli.config[cli.subcommand].get("ckpt_path")
        if ckpt:
            lines.append(f"  checkpoint: {ckpt}")
    log_dir = getattr(trainer.loggers[0], "log_dir", None) if trainer.loggers else None
    if log_dir:
        lines.append(f"  metrics: {Path(log_dir) / 'metrics.csv'}")
        if (Path(log_dir) / "config.yaml").is_file():
            lines.append(f"  config: {Path(log_dir) / 'config.yaml'}")
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if metrics:
        shown = ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
        lines.append(f"  final: {shown}")
    print("\n".join(lines), flush=True)
    if log_dir and cli.subcommand == "fit":
        write_metrics_json(cli, Path(log_dir))
    if log_dir and cli.subcommand == "fit":
        from ftlight.cli import report

        try:
            report.main([str(log_dir)])
        except Exception as err:  # a report must never fail a finished run
            print(f"ftlight: report skipped ({type(err).__name__}: {err})", flush=True)


def _remove_unused_run_folder(run_dir: Path | None) -> None:
    """After a failed start, remove this run's folder if it holds no checkpoint or metrics."""
    if run_dir is None or not run_dir.is_dir():
        return
    if any(run_dir.rglob("*.ckpt")) or (run_dir / "metrics.csv").is_file():
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    with contextlib.suppress(OSError):  # and logs/ too, when that was all it held
        run_dir.parent.rmdir()


def known_errors() -> dict[type[BaseException], str]:
    """The errors the command line reports in one line, each with its fix in CLI terms.

    Also known: any ``ValueError`` that ftlight raises on purpose (see :func:`describe_error`).
    """
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from ftlight.callbacks.feature_cache import CachingUnavailableError
    from ftlight.callbacks.guards import NonFiniteLossError
    from ftlight.data.io import CorruptImageError
    from ftlight.finetuner import ClassNamesMismatchError
    from ftlight.models.weights import WeightsMismatchError, WeightsUnavailableError

    return {
        CorruptImageError: "Fix or remove the file(s), or skip unreadable images with "
        "--data.skip_corrupt true.",
        WeightsUnavailableError: "Fix: pass a local file with --model.weights PATH "
        "(.safetensors/.pth/.ckpt), or copy a cache made with network (HF_HOME, TORCH_HOME); "
        "HF_HUB_OFFLINE=1 skips the network; --model.weights null trains from random weights.",
        WeightsMismatchError: "Fix: pass --model.weights a file saved from the same "
        "--model.backbone.",
        ClassNamesMismatchError: "Fix: point --data.root at data with the checkpoint's classes, "
        "or start a new run from its weights (--model.weights CKPT, without --ckpt_path).",
        CheckpointError: "",
        FileNotFoundError: "",
        NonFiniteLossError: "",
        CachingUnavailableError: "Fix: --model.cache_features false.",
        MisconfigurationException: "",
    }


def _raised_by_ftlight(err: BaseException) -> bool:
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and str(tb.tb_frame.f_globals.get("__name__", "")).startswith("ftlight")


# torch.optim.Optimizer.load_state_dict's words when a resumed run's groups differ
_OPTIMIZER_GROUPS_MISMATCH = "parameter group that doesn't match the size of optimizer's group"


def describe_error(err: BaseException) -> str | None:
    """One line for a known error (its message up to any Python-spelled fix, then the CLI fix);
    ``None`` for an unexpected one (a bug: show the traceback)."""
    if isinstance(err, ValueError) and _OPTIMIZER_GROUPS_MISMATCH in str(err):
        return (
            "--ckpt_path: the checkpoint's optimizer holds other parameter groups than this run "
            "builds (--staged.milestones, the backbone or the frozen layers differ from the run "
            "being resumed). Resume with the run's own settings (its config.yaml), or start a "
            "new run from its weights: --model.weights CKPT without --ckpt_path."
        )
    hint = next((h for cls, h in known_errors().items() if isinstance(err, cls)), None)
    if hint is None:
        if not (isinstance(err, ValueError) and _raised_by_ftlight(err)):
            return None
        hint = ""
    if isinstance(err, DataFolderNotFoundError):
        return data_folder_message(err)
    if not str(err).strip():
        return f"{type(err).__name__}. {hint}".strip()
    line = summary(err)
    if hint:
        line = line.split(" Fix:", 1)[0]
    return f"{line} {hint}".strip()


def data_folder_message(err: DataFolderNotFoundError) -> str:
    """A missing data folder in command-line terms: the flag that set it and the path received."""
    flag = f"--data.{err.argument}"
    return (
        f"{flag} {err.path}: {err.problem} (resolved to {err.resolved}). Expected a folder of "
        f"images with one sub-folder per class; fix the path given to {flag} (on the command "
        "line or in the --config file)."
    )


def run_lightning(argv: Sequence[str]) -> int:
    """Run ``fit``, ``validate`` or ``test`` through LightningCLI."""
    from ftlight.data import ImageDataModule
    from ftlight.finetuner import FineTuner

    cli_class = _lightning_cli_class()
    # LightningCLI reads sys.argv, and so do Lightning's DDP launchers, which re-run this
    # command in each child process: give them the resolved arguments.
    saved_argv = sys.argv
    sys.argv = [saved_argv[0] if saved_argv else "ftlight", *_resolve_config_args(list(argv))]
    try:
        cli = cli_class(
            FineTuner,
            ImageDataModule,
            auto_configure_optimizers=False,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"prog": "ftlight"},
        )
        if getattr(cli, "trainer", None) is not None and cli.subcommand:
            _summarise(cli)
    except Exception:
        _remove_unused_run_folder(cli_class.run_dir)
        raise
    finally:
        sys.argv = saved_argv
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ftlight`` command."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in args:
        args = [a for a in args if a != "--debug"]
        os.environ["FTLIGHT_DEBUG"] = "1"  # also for DDP child processes
    if not args or args[0] in ("-h", "--help"):
        print(USAGE.format(configs=", ".join(bundled_configs())))
        return 0 if args else EXIT_USAGE
    command, rest = args[0], args[1:]
    if command not in OWN_SUBCOMMANDS and command not in LIGHTNING_SUBCOMMANDS:
        print(USAGE.format(configs=", ".join(bundled_configs())), file=sys.stderr)
        print(f"ftlight: error: unknown command {command!r}.", file=sys.stderr)
        return EXIT_USAGE
    try:
        if command in OWN_SUBCOMMANDS:
            module = importlib.import_module(OWN_SUBCOMMANDS[command])
            return int(module.main(rest) or 0)
        return run_lightning(args)
    except Exception as err:
        line = None if debug_enabled() else describe_error(err)
        if line is None:
            raise
        return print_error(line)


if __name__ == "__main__":
    sys.exit(main())
