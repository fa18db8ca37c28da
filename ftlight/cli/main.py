"""The ``ftlight`` command line: LightningCLI ``fit/validate/test`` plus ``predict``,
``export``, ``demo`` and ``report``.

``ftlight fit --config resnet50 --data.root my_images/`` trains with a bundled config
(``ftlight/configs/<name>.yaml``; a path to any YAML works too). The data's class count and
names flow to the model; the backbone's preprocessing (input size, mean/std, interpolation)
flows to the data module when the model is set up (``FineTuner.setup``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).parent / "configs"
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test")
OWN_SUBCOMMANDS = {
    "demo": "ftlight.cli.demo",
    "report": "ftlight.cli.report",
    "predict": "ftlight.cli.predict",
    "export": "ftlight.cli.export",
}

USAGE = """usage: ftlight {{fit,validate,test,predict,export,demo,report}} ...

  fit        train (LightningCLI); e.g. ftlight fit --config resnet50 --data.root imgs/
  validate   evaluate a checkpoint on the validation split (LightningCLI)
  test       evaluate a checkpoint on the test split (LightningCLI)
  predict    top-k predictions for a folder or files -> CSV
  export     TorchScript / ONNX export with preprocessing and class names
  demo       offline transfer-learning demo
  report     summarise a run directory

Bundled configs: {configs}
Run `ftlight <command> --help` for the options of a command.
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
        f"ftlight: config {value!r} is neither a file nor a bundled config. "
        f"Bundled configs: {bundled_configs()}"
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


def _lightning_cli_class() -> type:
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

    from ftlight.callbacks.guards import AtomicCheckpointIO, NonFiniteLossGuard
    from ftlight.callbacks.staged import StagedUnfreeze

    class FtlightCLI(LightningCLI):
        """LightningCLI with ftlight's links, checkpointing and logging defaults."""

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

        def before_instantiate_classes(self) -> None:
            config = self.config[self.subcommand] if self.subcommand else self.config
            root = Path(config.trainer.default_root_dir or ".")
            # A fixed checkpoint folder, so that `--ckpt_path last` finds the previous run.
            if config.get("checkpoint") is not None and config.checkpoint.dirpath is None:
                config.checkpoint.dirpath = str(root / "checkpoints")
            # Evaluating or resuming from a checkpoint: its weights replace the backbone's, so
            # never download them (a resume must work offline). Only when the checkpoint is
            # really there: `--ckpt_path last` without one starts afresh, with the weights.
            ckpt = config.get("ckpt_path")
            if ckpt and self.subcommand == "fit" and ckpt in ("last", "hpc", "best"):
                dirpath = config.get("checkpoint") and config.checkpoint.dirpath
                ckpt = str(Path(dirpath) / "last.ckpt") if ckpt == "last" and dirpath else None
            if (ckpt and Path(ckpt).is_file()) or (
                self.subcommand in ("validate", "test") and config.get("ckpt_path")
            ):
                config.model.weights = None

        def instantiate_trainer(self, **kwargs: Any):
            config = self.config[self.subcommand] if self.subcommand else self.config
            if config.trainer.logger in (None, True):
                kwargs["logger"] = default_loggers(config.trainer.default_root_dir or ".")
            if not config.trainer.get("plugins"):
                kwargs.setdefault("plugins", [AtomicCheckpointIO()])
            trainer = super().instantiate_trainer(**kwargs)
            history = _metrics_history()
            if history is not None:
                trainer.callbacks.append(history)
            if not any(isinstance(cb, NonFiniteLossGuard) for cb in trainer.callbacks):
                # Before the checkpoint callbacks, so that bad weights are never saved.
                trainer.callbacks.insert(0, NonFiniteLossGuard())
            return trainer

    return FtlightCLI


def _metrics_history() -> Any:
    """ftlight.cli.report's per-epoch history callback, when that module is available."""
    if importlib.util.find_spec("ftlight.cli.report") is None:
        return None
    try:
        return importlib.import_module("ftlight.cli.report").MetricsHistory()
    except (ImportError, AttributeError, TypeError):
        return None


def default_loggers(root: str) -> list[Any]:
    """TensorBoard (a default dependency) and CSV loggers writing into one Lightning version
    folder, ``<root>/logs/version_N/`` (events file, ``metrics.csv``, ``hparams.yaml``).

    TensorBoard is left out, not an error, when the package is missing.
    """
    from lightning.pytorch.loggers import CSVLogger

    csv = CSVLogger(root, name="logs")
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
    """Print where checkpoints and metrics are, then the run report when available."""
    trainer = cli.trainer
    if not trainer.is_global_zero:
        return
    lines = ["", "ftlight: run finished."]
    ckpt = trainer.checkpoint_callback
    if ckpt is not None and getattr(ckpt, "dirpath", None):
        lines.append(f"  checkpoints: {ckpt.dirpath}")
        if getattr(ckpt, "best_model_path", ""):
            lines.append(f"    best: {ckpt.best_model_path}")
        if getattr(ckpt, "last_model_path", ""):
            lines.append(f"    last: {ckpt.last_model_path}")
    log_dir = None
    if trainer.loggers:
        log_dir = trainer.loggers[0].log_dir
        lines.append(f"  metrics: {Path(log_dir) / 'metrics.csv'}")
        lines.append(f"  config:  {Path(log_dir) / 'config.yaml'}")
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if metrics:
        shown = ", ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
        lines.append(f"  final: {shown}")
    print("\n".join(lines), flush=True)
    if log_dir and cli.subcommand == "fit":
        write_metrics_json(cli, Path(log_dir))
    if log_dir and cli.subcommand == "fit" and importlib.util.find_spec("ftlight.cli.report"):
        try:
            importlib.import_module("ftlight.cli.report").main([str(log_dir)])
        except Exception as err:  # a report must never fail a finished run
            print(f"ftlight: report skipped ({type(err).__name__}: {err})", flush=True)


def run_lightning(argv: Sequence[str]) -> int:
    """Run ``fit``, ``validate`` or ``test`` through LightningCLI."""
    from ftlight.callbacks.guards import NonFiniteLossError
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
    except NonFiniteLossError as err:
        print(f"ftlight: error: {err}", file=sys.stderr, flush=True)
        return 1
    finally:
        sys.argv = saved_argv
    if getattr(cli, "trainer", None) is not None and cli.subcommand:
        _summarise(cli)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ftlight`` command."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE.format(configs=", ".join(bundled_configs())))
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command in OWN_SUBCOMMANDS:
        module = importlib.import_module(OWN_SUBCOMMANDS[command])
        return int(module.main(rest) or 0)
    if command in LIGHTNING_SUBCOMMANDS:
        return run_lightning(args)
    print(f"ftlight: unknown command {command!r}.\n")
    print(USAGE.format(configs=", ".join(bundled_configs())))
    return 2


if __name__ == "__main__":
    sys.exit(main())
