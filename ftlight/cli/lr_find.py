"""``ftlight lr-find``: the learning-rate range test on a run's model and data, no training.

Takes the arguments of ``ftlight fit`` (``--config``, ``--model.*``, ``--data.*``,
``--trainer.*``) plus ``--lr_find.*`` (:class:`ftlight.tuning.LRFinder`: ``min_lr``,
``max_lr``, ``num_training_steps``, ``mode``, ``early_stop_threshold``, ``save_dir``), sweeps
the head's learning rate with every other parameter group at its ratio to it, prints the
suggestion and writes ``lr_find.png``, ``lr_find.json`` and ``lr_find.csv`` into
``--lr_find.save_dir`` (default: ``--trainer.default_root_dir``, where the runs' ``logs/``
are). Nothing else is written: no run folder, no checkpoint. ``ftlight fit --model.lr auto``
runs the same sweep at the start of training instead.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def main(argv: Sequence[str] | None = None) -> int:
    """``ftlight lr-find [fit's arguments] [--lr_find.* ...]``."""
    from lightning.pytorch.cli import LightningArgumentParser

    from ftlight.cli.main import _lightning_cli_class, _resolve_config_args
    from ftlight.data import ImageDataModule
    from ftlight.finetuner import FineTuner
    from ftlight.tuning import LRFinder, is_auto, refuse_auto_with_backbone_lr

    base = _lightning_cli_class()

    class LRFindCLI(base):  # type: ignore[misc, valid-type]
        def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
            super().add_arguments_to_parser(parser)
            parser.add_lightning_class_args(LRFinder, "lr_find")
            parser.set_defaults(
                {
                    "lr_find.early_exit": True,
                    "lr_find.update_attr": False,
                    "trainer.logger": False,
                    "trainer.enable_model_summary": False,
                }
            )

        def before_instantiate_classes(self) -> None:
            super().before_instantiate_classes()
            type(self).run_dir = None  # no run folder: the files go to save_dir
            config = self.config[self.subcommand]
            if is_auto(config.model.get("lr")):
                refuse_auto_with_backbone_lr("auto", config.model.get("backbone_lr"), "--model.")
                config.model.lr = 1e-3  # the sweep needs the groups' ratios only
            if config.lr_find.get("save_dir") is None:
                config.lr_find.save_dir = str(config.trainer.default_root_dir or ".")
            config.lr_find.early_exit = True

    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("--ckpt_path",) or a.startswith("--ckpt_path=") for a in args):
        raise ValueError(
            "ftlight lr-find sweeps a model from its start, not a checkpoint (received "
            "--ckpt_path). Start a new run from the checkpoint's weights with --model.weights "
            "CKPT instead."
        )
    saved_argv = sys.argv
    sys.argv = ["ftlight", "fit", *_resolve_config_args(args)]
    try:
        cli = LRFindCLI(
            FineTuner,
            ImageDataModule,
            auto_configure_optimizers=False,
            save_config_callback=None,
            parser_kwargs={"prog": "ftlight lr-find"},
        )
    finally:
        sys.argv = saved_argv
    finder = next(cb for cb in cli.trainer.callbacks if isinstance(cb, LRFinder))
    if finder.suggestion is None:  # fast_dev_run, or no data: Lightning skipped the sweep
        raise ValueError(
            "ftlight lr-find: the finder did not run (with --trainer.fast_dev_run it never "
            "does); run it without fast_dev_run."
        )
    _report(finder, cli)
    return 0


def _report(finder: Any, cli: Any) -> None:
    config = cli.config["fit"]
    lr = finder.suggestion
    lines = [
        f"ftlight: lr-find: suggested lr {lr:.3g} (the head's; the backbone groups keep their "
        f"ratios to it), from {len(finder.optimal_lr.results['lr'])} steps between "
        f"{finder._min_lr:g} and {finder._max_lr:g}.",
    ]
    for name, path in finder.files.items():
        lines.append(f"  {name}: {Path(path)}")
    given = config.model.get("backbone_lr")
    extra = ""
    if given is not None:
        lr_given = float(config.model.lr)
        extra = f" --model.backbone_lr {float(given) * lr / lr_given:.3g}"
    lines.append(
        f"  train with: ftlight fit ... --model.lr {lr:.3g}{extra} (or --model.lr auto to "
        "sweep at the start of fit)"
    )
    print("\n".join(lines), flush=True)
