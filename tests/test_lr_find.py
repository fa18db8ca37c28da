"""Learning-rate finder: Lightning's range test on FineTuner, group ratios kept (tiny real runs)."""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.tuner import Tuner

from ftlight import FineTuner
from ftlight.callbacks import Milestone, StagedUnfreeze
from ftlight.cli.main import main as cli_main
from ftlight.cli.main import reconcile_with_checkpoint
from ftlight.tuning import LRFinder, LRFinderError, lr_find
from tests.conftest import make_image_folder, two_class_arrays_dm

REPO = Path(__file__).resolve().parents[1]


make_dm = two_class_arrays_dm


class RecordingTuner(FineTuner):
    """Records every group's learning rate at each optimizer step (a module hook: Lightning's
    finder swaps the Trainer's callbacks out during its sweep, not the module's hooks)."""

    def on_before_optimizer_step(self, optimizer) -> None:
        self.__dict__.setdefault("steps", []).append([g["lr"] for g in optimizer.param_groups])


def model(cls=RecordingTuner, **kw) -> FineTuner:
    L.seed_everything(0, verbose=False)
    kw.setdefault("layer_decay", 0.5)
    return cls("test_efficientnet", 2, None, image_size=32, **kw)


def trainer(root: Path, **kw) -> L.Trainer:
    kw.setdefault("logger", False)
    kw.setdefault("enable_checkpointing", False)
    return L.Trainer(
        accelerator="cpu",
        default_root_dir=root,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kw,
    )


def expected_ratios(m: FineTuner) -> list[float]:
    groups = m.param_groups()
    return [g["lr"] / groups[0]["lr"] for g in groups]


def test_lr_find_sweeps_with_group_ratios_and_writes_plot_and_points(tmp_path) -> None:
    m = model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    ratios = expected_ratios(m)
    assert len(set(ratios)) > 3  # head 1, backbone 0.1 * 0.5**k: a real test of the ratios
    # An epoch has 3 batches: the sweep runs on across epochs.
    finder = lr_find(
        m, make_dm(), trainer(tmp_path, max_epochs=10), num_training_steps=25, min_lr=1e-5
    )
    assert len(m.steps) == 25
    for lrs in m.steps:  # every step: each group at the head's rate times its ratio
        assert [lr / lrs[0] for lr in lrs] == pytest.approx(ratios, rel=1e-9)
    heads = [lrs[0] for lrs in m.steps]
    assert heads[0] == pytest.approx(1e-5) and heads[-1] == pytest.approx(1.0)
    assert all(b >= a for a, b in itertools.pairwise(heads))
    # a finite suggestion within the sweep, applied to lr
    s = finder.suggestion
    assert s is not None and math.isfinite(s) and 1e-5 < s < 1.0
    assert m.hparams.lr == s
    assert expected_ratios(m) == pytest.approx(ratios)
    # the weights are those from before the sweep
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    # files next to the run: plot, points as JSON and CSV
    assert set(finder.files) == {"png", "json", "csv"}
    assert finder.files["png"] == tmp_path / "lr_find.png"
    assert finder.files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads(finder.files["json"].read_text())
    assert record["suggestion"] == s and record["steps_run"] == 25
    points = record["points"]
    assert [p["lr"] for p in points] == pytest.approx(heads)
    assert s in [p["lr"] for p in points]
    rows = list(csv.reader(finder.files["csv"].open()))
    assert rows[0] == ["lr", "loss"] and len(rows) == 26
    assert float(rows[1][0]) == pytest.approx(points[0]["lr"])


def test_suggestion_differentiates_against_log_lr() -> None:
    """Lightning 2.6 differentiates against lr itself (biased towards the low rates of an
    exponential sweep); the suggestion is where the loss falls fastest per decade."""
    from lightning.pytorch.tuner.lr_finder import _LRFinder

    from ftlight.tuning import suggest

    result = _LRFinder("exponential", 1e-6, 1.0, 60)
    lrs = list(np.logspace(-6, 0, 60))
    # flat until 1e-3, steepest around 1e-2, then flat again
    losses = [1.0 - 0.5 * math.tanh(2 * (math.log10(lr) + 2)) for lr in lrs]
    result.results = {"lr": lrs, "loss": losses}
    assert suggest(result) == pytest.approx(1e-2, rel=0.15)
    assert result.suggestion() < 0.5e-2  # Lightning's own, on the low side


def test_lightning_tuner_lr_find_keeps_group_ratios(tmp_path) -> None:
    m = model()
    ratios = expected_ratios(m)
    result = Tuner(trainer(tmp_path, max_epochs=5)).lr_find(
        m, datamodule=make_dm(), num_training=12, min_lr=1e-4
    )
    assert len(m.steps) == 12
    for lrs in m.steps:
        assert [lr / lrs[0] for lr in lrs] == pytest.approx(ratios, rel=1e-9)
    assert result.results["lr"] == pytest.approx([lrs[0] for lrs in m.steps])


def test_gated_groups_stay_still_during_the_sweep(tmp_path) -> None:
    m = model(freeze=True)
    staged = StagedUnfreeze([Milestone(epoch=1, groups=1)])
    top = m.backbone.layer_groups[-1].name
    t = trainer(tmp_path, max_epochs=5, callbacks=[staged])
    lr_find(m, make_dm(), t, num_training_steps=14, min_lr=1e-4)
    names = [g["name"] for g in m.param_groups()]
    assert top in names
    for lrs in m.steps:
        rates = dict(zip(names, lrs, strict=True))
        assert rates[top] == 0.0 and rates["head"] > 0


def test_lr_auto_sets_a_numeric_lr_before_training_and_resume_keeps_it(tmp_path) -> None:
    class Seen(L.Callback):
        def on_train_start(self, trainer, pl_module) -> None:
            self.lr = pl_module.hparams.lr
            self.groups = [(g["name"], g["lr"]) for g in trainer.optimizers[0].param_groups]

    m = model(cls=FineTuner, lr="auto")
    ratios = expected_ratios(m)
    seen = Seen()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    finder = LRFinder(num_training_steps=15, only_auto=True)  # FineTuner adds one if none
    t = trainer(
        tmp_path,
        max_epochs=5,
        callbacks=[seen, ckpt, finder],
        enable_checkpointing=True,
        logger=True,
    )
    t.fit(m, datamodule=make_dm())
    assert [cb for cb in t.callbacks if isinstance(cb, LRFinder)] == [finder]
    lr = finder.suggestion
    assert isinstance(seen.lr, float) and math.isfinite(seen.lr) and seen.lr == lr
    # the optimizer that trained was built from it: every group at lr times its ratio
    assert [g[1] / lr for g in seen.groups] == pytest.approx(ratios)
    # saved next to the run (its log folder), and the checkpoint holds the number
    assert (Path(t.log_dir) / "lr_find.png").is_file()
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert saved["hyper_parameters"]["lr"] == lr
    assert FineTuner.from_checkpoint(tmp_path / "ckpt" / "last.ckpt").hparams.lr == lr
    # resume with lr="auto": the checkpoint's rate, no new sweep
    again = model(cls=FineTuner, lr="auto")
    seen2 = Seen()
    t2 = trainer(tmp_path / "resume", max_epochs=6, callbacks=[seen2])
    t2.fit(again, datamodule=make_dm(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    finder2 = next(cb for cb in t2.callbacks if isinstance(cb, LRFinder))
    assert finder2.optimal_lr is None and seen2.lr == lr
    assert not (tmp_path / "resume" / "lr_find.png").exists()
    assert [g[1] / lr for g in seen2.groups] == pytest.approx(ratios)


def test_bad_lr_values_are_refused() -> None:
    expected = re.escape("lr must be a number or 'auto'. Received: 'fast'")
    with pytest.raises(ValueError, match=expected):
        FineTuner("test_efficientnet", 2, None, lr="fast")
    with pytest.raises(ValueError, match=re.escape("lr='auto' with backbone_lr=0.001")):
        FineTuner("test_efficientnet", 2, None, lr="auto", backbone_lr=1e-3)
    with pytest.raises(ValueError, match="num_training_steps must be >= 13"):
        LRFinder(num_training_steps=5)
    with pytest.raises(ValueError, match="Expected 0 < min_lr < max_lr"):
        LRFinder(min_lr=1.0, max_lr=0.1)


def test_a_sweep_that_diverges_at_once_says_so_and_what_to_try(tmp_path) -> None:
    m = model(cls=FineTuner, optimizer="sgd")
    with pytest.raises(LRFinderError) as err:
        lr_find(m, make_dm(), trainer(tmp_path, max_epochs=40), min_lr=1e6, max_lr=1e12)
    message = str(err.value)
    assert "found no suggestion" in message and "100 steps" in message
    assert "lower min_lr (was 1e+06)" in message and "numeric lr" in message
    assert (tmp_path / "lr_find.png").is_file()  # the plot shows what happened
    assert m.hparams.lr == 1e-3  # unchanged
    # 18 of 20 steps give points for a suggestion, but the sweep never reached the high rates
    expected = r"ran out of data after 18 of 20 steps, reaching lr=.* \(max_epochs=6 epochs of 3"
    with pytest.raises(LRFinderError, match=expected):
        lr_find(m, make_dm(), trainer(tmp_path, max_epochs=6), num_training_steps=20)


def test_cli_lr_find_prints_the_suggestion_and_writes_the_plot(tmp_path) -> None:
    make_image_folder(tmp_path / "imgs", per_class=12, size=32)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ftlight.cli",
            "lr-find",
            "--model.backbone=test_efficientnet",
            "--model.image_size=32",
            "--data.root=imgs",
            "--data.batch_size=4",
            "--trainer.accelerator=cpu",
            "--trainer.default_root_dir=run",
            "--lr_find.num_training_steps=15",
            "--lr_find.min_lr=1e-4",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("ftlight: lr-find:"))
    lr = float(line.split("suggested lr ")[1].split()[0])
    assert math.isfinite(lr) and lr > 0
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["lr_find.csv", "lr_find.json", "lr_find.png"]
    assert json.loads((run / "lr_find.json").read_text())["suggestion"] == pytest.approx(lr, 1e-2)
    assert f"--model.lr {lr:.3g}" in proc.stdout


def test_cli_lr_find_errors_in_one_line(tmp_path, capsys, monkeypatch) -> None:
    make_image_folder(tmp_path / "imgs", per_class=4, size=32)
    monkeypatch.chdir(tmp_path)
    code = cli_main(
        [
            "lr-find",
            "--model.backbone=test_efficientnet",
            "--model.image_size=32",
            "--model.optimizer=sgd",
            "--data.root=imgs",
            "--data.batch_size=4",
            "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false",
            "--lr_find.min_lr=1e6",
            "--lr_find.max_lr=1e12",
            "--lr_find.num_training_steps=15",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("ftlight: error: The learning-rate finder found no suggestion")
    assert "lower min_lr" in err[-1]


def test_cli_parses_lr_auto_and_a_resume_keeps_the_rate_found(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        cli_main(["fit", "--model.lr", "auto", "--model.ema_decay", "0.99", "--print_config"])
    assert exc.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["lr"] == "auto" and config["model"]["ema_decay"] == 0.99
    # resuming a run whose lr was found: its number, with a note, never a new sweep
    given = {"lr": "auto", "backbone": "resnet50"}
    notes = reconcile_with_checkpoint(
        given,
        {"lr": 1e-3, "backbone": "resnet50"},
        {"lr": 0.02, "backbone": "resnet50"},
        ["--model.lr", "auto"],
        resuming=True,
    )
    assert given["lr"] == 0.02
    assert notes == ["--model.lr=auto: the checkpoint's lr 0.02 (found then) is used."]
