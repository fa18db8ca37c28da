"""``ftlight report RUN_DIR``: learning curves, confusion matrix, most confident mistakes,
and a Markdown summary linking them. (Written by real runs too: test_demo.py, test_faults.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ftlight.cli.report import worst_mistakes, write_report


def test_worst_mistakes_are_the_most_confident_wrong_predictions() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.05, 0.95], [0.7, 0.3]])
    truth = [0, 0, 0, 1, 1]  # wrong: rows 1 (P=0.8), 2 (P=0.6), 4 (P=0.7)
    paths = [f"img{i}.png" for i in range(5)]
    got = worst_mistakes(paths, truth, probs, ["cat", "dog"], k=2)
    assert [m["path"] for m in got] == ["img1.png", "img4.png"]
    assert got[0] == {
        "path": "img1.png",
        "true": "cat",
        "pred": "dog",
        "prob": 0.8,
        "prob_true": 0.2,
    }
    assert worst_mistakes(paths, [0, 1, 1, 1, 0], probs, ["cat", "dog"]) == []


def _run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / "imgs").mkdir(parents=True)
    mistakes = []
    for i, (true, pred) in enumerate((("3", "8"), ("5", "9"), ("7", "1"))):
        path = run / "imgs" / f"{i}.png"
        Image.fromarray(np.full((16, 16), 40 * i, dtype=np.uint8), mode="L").save(path)
        mistakes.append({"path": str(path), "true": true, "pred": pred, "prob": 0.9 - i / 10})
    mistakes.append({"path": str(run / "missing.png"), "true": "0", "pred": "6", "prob": 0.5})
    epochs = [
        {
            "phase": "head" if e < 3 else "fine-tune",
            "epoch": e,
            "train_loss": 1 / (e + 1),
            "val_loss": 1.2 / (e + 1),
            "train_acc": 0.5 + e / 10,
            "val_acc": 0.45 + e / 10,
        }
        for e in range(5)
    ]
    names = [str(d) for d in range(10)]
    metrics = {
        "backbone": "efficientnet_lite0",
        "test_accuracy": 0.9612,
        "epochs": epochs,
        "class_names": names,
        "confusion_matrix": (np.eye(10, dtype=int) * 30 + 1).tolist(),
        "confusion_split": "test",
        "mistakes": mistakes,
        "mistakes_split": "validation",
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_report_writes_valid_pngs_and_a_summary_linking_them(tmp_path: Path) -> None:
    run = _run_dir(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "ftlight.cli", "report", str(run)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "report.md" in proc.stdout
    sizes = {}
    for name in ("learning_curves.png", "confusion_matrix.png", "mistakes.png"):
        with Image.open(run / name) as img:
            img.verify()
        with Image.open(run / name) as img:
            sizes[name] = img.size
            assert img.format == "PNG"
            # Not blank: a real plot has many distinct colours.
            assert len(img.convert("RGB").getcolors(1_000_000)) > 50, name
    assert sizes["mistakes.png"][0] >= 600  # 4 tiles wide, legible
    report = (run / "report.md").read_text()
    for link in ("](learning_curves.png)", "](confusion_matrix.png)", "](mistakes.png)"):
        assert link in report
    assert "**test_accuracy**: 0.9612" in report
    assert "Most confident mistakes (validation)" in report
    assert f"| 1 | `{run / 'imgs' / '0.png'}` | 3 | 8 | 0.900 |" in report
    assert not list(run.glob(".*.tmp-*"))  # atomic writes leave no temporary files


def test_report_on_a_directory_without_metrics_explains(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"No metrics\.json in .*ftlight demo"):
        write_report(tmp_path)


def test_report_on_a_checkpoint_file_names_the_folder_to_give(tmp_path: Path) -> None:
    from ftlight.cli.report import find_run

    (tmp_path / "model.ckpt").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match=rf"is a file; .*ftlight report {tmp_path}$"):
        find_run(tmp_path / "model.ckpt")


def _edges_blank(path: Path) -> bool:
    """Nothing drawn in the outer 3 pixels: no title, label or tile was cut off."""
    with Image.open(path) as img:
        a = np.asarray(img.convert("L"))
    edges = np.concatenate([a[:3].ravel(), a[-3:].ravel(), a[:, :3].ravel(), a[:, -3:].ravel()])
    return int(edges.min()) > 245


def _metrics_for(run: Path, classes: int, mistakes: int, epochs: int) -> dict:
    rng = np.random.default_rng(classes)
    names = (
        [f"class_{i}" for i in range(classes)] if classes > 10 else [str(i) for i in range(classes)]
    )
    cm = rng.integers(0, 5, (classes, classes))
    cm[np.arange(classes), np.arange(classes)] += 40
    (run / "imgs").mkdir(parents=True)
    rows = []
    for i in range(mistakes):
        path = run / "imgs" / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        rows.append({"path": str(path), "true": names[i], "pred": names[-1], "prob": 0.9})
    history = [
        {
            "phase": "fit",
            "epoch": e,
            "train_loss": 1 / (e + 1),
            "val_loss": 1.1 / (e + 1),
            "train_acc": 0.5 + e / 40,
            "val_acc": 0.4 + e / 40,
            "staged_phase": float(e // 4),
        }
        for e in range(epochs)
    ]
    return {
        "backbone": "resnet18",
        "train_loss": 0.25,
        "train_loss_epoch": 0.25,
        "train_loss_step": 0.2,
        "staged_phase": 2.0,
        "val_acc": 0.9,
        "epochs": history,
        "class_names": names,
        "confusion_matrix": cm.tolist(),
        "confusion_split": "validation",
        "mistakes": rows,
        "mistakes_split": "validation",
    }


@pytest.mark.parametrize(
    ("classes", "mistakes", "epochs"), [(2, 0, 1), (3, 2, 1), (10, 5, 6), (100, 16, 12)]
)
def test_pictures_at_every_class_count_are_whole_and_legible(
    tmp_path: Path, classes: int, mistakes: int, epochs: int
) -> None:
    """Drawn at 2, 3, 10 and 100 classes and looked at; the checks that catch what went wrong:
    a small matrix or an empty grid cut its title off at the edges, and 100 classes made a
    5100-pixel matrix of unreadable numbers."""
    run = tmp_path / f"run{classes}"
    metrics = _metrics_for(run, classes, mistakes, epochs)
    (run / "metrics.json").write_text(json.dumps(metrics))
    report = write_report(run).read_text()
    for name in ("learning_curves.png", "confusion_matrix.png", "mistakes.png"):
        with Image.open(run / name) as img:
            img.verify()
        with Image.open(run / name) as img:
            assert img.format == "PNG"
            assert max(img.size) <= 2500, (name, img.size)
            colours = len(img.convert("RGB").getcolors(1_000_000))
            assert colours > (20 if name == "mistakes.png" and not mistakes else 50), name
        assert _edges_blank(run / name), f"{name} is cut off at {classes} classes"
    # The summary lists each metric once; the phase is on the curves, not a metric.
    summary = report.split("## ")[0]
    assert "- **train_loss**: 0.2500" in summary
    assert "train_loss_epoch" not in summary and "train_loss_step" not in summary
    assert "staged_phase" not in summary
    assert ("Most frequent confusions" in report) == (classes > 10)


def test_curves_of_one_epoch_have_integer_ticks_and_milestones_are_marked() -> None:
    from ftlight.cli.report import learning_curves_figure

    one = learning_curves_figure([{"phase": "fit", "epoch": 0, "train_loss": 1.0, "val_acc": 0.5}])
    for ax in one.axes:
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks == [0.0], ticks  # epochs count from 0, as in Lightning
    rows = [
        {
            "phase": "fit",
            "epoch": e,
            "train_loss": 1 / (e + 1),
            "staged_phase": float(e >= 3) + float(e >= 5),
        }
        for e in range(8)
    ]
    staged = learning_curves_figure(rows)
    for ax in staged.axes:
        dashed = sorted(line.get_xdata()[0] for line in ax.lines if line.get_linestyle() == "--")
        assert dashed == [2.5, 4.5]  # before epochs 3 and 5, where phases 1 and 2 start
        assert [t.get_text() for t in ax.texts] == ["unfreeze: phase 1", "unfreeze: phase 2"]


def test_staged_unfreeze_log_and_report_name_the_same_epoch(tmp_path: Path, caplog) -> None:
    """One convention (0-based, Lightning's ``Epoch 0``): the milestone StagedUnfreeze
    announces is the epoch the report and its learning curves mark."""
    import re

    from ftlight.callbacks.staged import Milestone, StagedUnfreeze
    from ftlight.cli.report import MetricsHistory, epoch_numbers, learning_curves_figure
    from tests.conftest import quiet_trainer
    from tests.test_staged import make_data, make_model

    history = MetricsHistory()
    trainer = quiet_trainer(
        max_epochs=3,
        callbacks=[StagedUnfreeze([Milestone(epoch=2, groups=["stage4"])]), history],
    )
    with caplog.at_level("INFO"):
        trainer.fit(make_model(), make_data())
    (logged,) = re.findall(r"stage4 from epoch (\d+) \(epochs count from 0", caplog.text)
    assert [row["epoch"] for row in history.epochs] == [0, 1, 2]
    assert [row["staged_phase"] for row in history.epochs] == [0.0, 0.0, 1.0]
    (tmp_path / "metrics.json").write_text(json.dumps({"epochs": history.epochs}))
    report = write_report(tmp_path).read_text()
    (reported,) = re.findall(r"- from epoch (\d+) \(dashed line\): unfreeze: phase 1", report)
    assert logged == reported == "2"
    assert "Epochs count from 0" in report
    figure = learning_curves_figure(history.epochs)
    dashed = [line.get_xdata()[0] for line in figure.axes[0].lines if line.get_linestyle() == "--"]
    assert dashed == [1.5]  # between epochs 1 and 2
    # Rows of two trainers (the demo's phases) are numbered on; the report gives both numbers.
    rows = [{"phase": "head", "epoch": e} for e in range(2)] + [{"phase": "fine-tune", "epoch": 0}]
    assert epoch_numbers(rows) == [0, 1, 2]
    (tmp_path / "metrics.json").write_text(json.dumps({"epochs": rows}))
    assert "- from epoch 2 (fine-tune epoch 0) (dashed line): fine-tune" in (
        write_report(tmp_path).read_text()
    )


@pytest.mark.slow
def test_report_says_which_weights_it_evaluated_and_draws_the_best_too(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A real run whose best checkpoint (by a logged score) is epoch 0 of 3: metrics.json and
    the report say the matrix and mistakes are the final epoch's, name the best checkpoint and
    draw its own matrix and mistakes, each equal to an independent evaluation of that file."""
    from types import SimpleNamespace

    import lightning as L
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint

    import ftlight
    from ftlight.cli.main import write_metrics_json
    from ftlight.cli.predict import predict_probabilities
    from ftlight.cli.report import MetricsHistory
    from tests.conftest import make_image_folder

    class Score(L.Callback):  # best at epoch 0 in mode max, whatever the losses do
        def on_validation_epoch_end(self, trainer, pl_module) -> None:
            pl_module.log("score", -float(trainer.current_epoch))

    root = make_image_folder(
        tmp_path / "data", classes=("a", "b", "c"), per_class=6, size=32, splits=("train", "val")
    )
    dm = ftlight.ImageDataModule.from_folder(root, batch_size=6, num_workers=0, augment=False)
    L.seed_everything(0, verbose=False)
    model = ftlight.FineTuner(  # a random head: the probe's would be perfect from epoch 0
        "resnet18", num_classes=3, image_size=32, freeze=True, lr=0.3, head_init="random"
    )
    ckpt = ModelCheckpoint(tmp_path / "ckpt", monitor="score", mode="max", save_last=True)
    trainer = L.Trainer(
        max_epochs=3,
        default_root_dir=tmp_path,
        logger=False,
        callbacks=[Score(), MetricsHistory(), ckpt],
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, dm)
    final_weights = {k: v.clone() for k, v in model.state_dict().items()}
    run = tmp_path / "run"
    run.mkdir()
    metrics = json.loads(
        write_metrics_json(
            SimpleNamespace(trainer=trainer, model=model, datamodule=dm), run
        ).read_text()
    )
    # The model keeps its final weights.
    assert all(torch.equal(final_weights[k], v) for k, v in model.state_dict().items())

    samples = dm.datasets["val"].samples
    paths, truth = [p for p, _ in samples], [t for _, t in samples]

    def evaluated(m: ftlight.FineTuner) -> tuple[list, list]:
        with torch.no_grad():
            probs = predict_probabilities(m, paths, batch_size=6)
        cm = np.zeros((3, 3), dtype=int)
        for t, p in zip(truth, probs.argmax(1).tolist(), strict=True):
            cm[t, p] += 1
        return cm.tolist(), worst_mistakes(paths, truth, probs, model.class_names)

    best_file = ckpt.best_model_path
    assert "epoch=0" in Path(best_file).name
    assert metrics["evaluation"]["weights"] == "final"
    assert metrics["evaluation"]["epoch"] == 2 and metrics["evaluation"]["global_step"] == 9
    assert metrics["best"]["checkpoint"] == best_file
    assert metrics["best"]["epoch"] == 0 and not metrics["best"]["same_as_final"]
    assert (metrics["confusion_matrix"], metrics["mistakes"]) == evaluated(model)
    best_model = ftlight.FineTuner.from_checkpoint(best_file)
    assert (metrics["best"]["confusion_matrix"], metrics["best"]["mistakes"]) == evaluated(
        best_model
    )
    assert metrics["best"]["mistakes"] != metrics["mistakes"]  # two states really evaluated

    report = write_report(run).read_text()
    assert "weights of the **final epoch** (epoch=2, step=9" in report
    assert (
        "The **best checkpoint** by score = 0.0000 is another state (epoch=0, step=3): "
        f"`{best_file}`" in report
    )
    assert f"`ftlight predict {best_file} IMAGES`" in report
    assert "## Confusion matrix (validation, final epoch)" in report
    assert "## Confusion matrix (validation, best)" in report
    assert "## Most confident mistakes (validation, best)" in report
    for name in ("confusion_matrix_best.png", "mistakes_best.png"):
        with Image.open(run / name) as img:
            assert img.format == "PNG"

    # An unreadable best checkpoint is said, and never fails the finished run.
    Path(best_file).write_bytes(b"not a checkpoint")
    capsys.readouterr()
    again = json.loads(
        write_metrics_json(
            SimpleNamespace(trainer=trainer, model=model, datamodule=dm), run
        ).read_text()
    )
    assert again["best_checkpoint"] == best_file and "best" not in again
    assert f"ftlight: report: cannot read {best_file}" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_fit_logs_the_report_pictures_to_tensorboard_next_to_the_scalars(
    tmp_path: Path,
) -> None:
    """TensorBoard is a default dependency: a plain `ftlight fit` writes one Lightning version
    folder holding the CSV metrics and a TensorBoard events file with scalars and pictures."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tests.conftest import make_image_folder

    make_image_folder(tmp_path / "imgs", classes=("cat", "dog"), per_class=8, size=32)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ftlight.cli",
            "fit",
            "--model.backbone",
            "resnet18",
            "--model.image_size",
            "32",
            "--model.freeze",
            "true",
            "--data.root",
            "imgs",
            "--data.batch_size",
            "4",
            "--data.num_workers",
            "0",
            "--trainer.max_epochs",
            "2",
            "--trainer.accelerator",
            "cpu",
            "--trainer.default_root_dir",
            "run",
            "--trainer.enable_progress_bar",
            "false",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    version = tmp_path / "run" / "logs" / "version_0"
    assert (version / "metrics.csv").is_file() and (version / "metrics.json").is_file()
    assert list(version.glob("events.out.tfevents.*")), sorted(p.name for p in version.iterdir())
    events = EventAccumulator(str(version), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"val/confusion_matrix", "val/mistakes"} <= set(tags["images"]), tags
    assert {"val_loss", "val_acc", "train_loss_epoch"} <= set(tags["scalars"]), tags
    assert "hp_metric" not in tags["scalars"]  # no placeholder scalar
    picture = events.Images("val/confusion_matrix")[-1]
    assert picture.step == events.Scalars("val_loss")[-1].step  # at the run's last step
    assert picture.encoded_image_string.startswith(b"\x89PNG")
