"""The ``ftlight`` command line: configs, and real fit/validate/test/predict/export runs."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ftlight import FineTuner
from ftlight.callbacks.staged import StagedUnfreeze
from ftlight.cli.main import bundled_configs, main
from ftlight.data import load_rgb
from ftlight.data.config import DataConfig
from ftlight.data.transforms import eval_transform
from tests.conftest import make_image_folder

CONFIGS = ["vgg16", "resnet50", "inception_v3", "efficientnet_lite0", "fine_tune"]


def ftlight(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "ftlight.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode in (0, 3), f"ftlight {args[0]} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def print_config(capsys, *args: str) -> dict:
    with pytest.raises(SystemExit) as exc:
        main(["fit", *args, "--print_config"])
    assert exc.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


# ---- parsing (in process) -----------------------------------------------------------------
def test_usage_lists_commands_and_configs(capsys) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for word in ("fit", "predict", "export", "demo", "report", *CONFIGS):
        assert word in out
    assert main(["bogus"]) == 2
    assert sorted(bundled_configs()) == sorted(CONFIGS)


def test_fit_help_lists_model_data_and_staged_options(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--model.backbone", "--data.root", "--staged.milestones", "--ckpt_path"):
        assert option in out


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("vgg16", marks=pytest.mark.slow),
        "resnet50",
        "inception_v3",
        "efficientnet_lite0",
    ],
)
def test_bundled_config_parses_and_builds(name: str, capsys) -> None:
    cfg = print_config(capsys, "--config", name)
    assert cfg["model"]["backbone"] == name
    assert cfg["checkpoint"]["save_last"] is True
    milestones = cfg["staged"]["milestones"]
    assert milestones and all("epoch" in m for m in milestones)
    model_args = {k: v for k, v in cfg["model"].items() if k not in ("num_classes", "class_names")}
    model = FineTuner(**{**model_args, "weights": None}, num_classes=3)  # one build per config
    resolved = StagedUnfreeze(milestones).resolve(model)
    assert resolved, f"{name}: no layer group is scheduled"
    assert model.data_config.input_size[-1] in (224, 299)


def test_config_by_path_and_trainer_flags_pass_through(capsys) -> None:
    path = Path(__file__).parents[1] / "ftlight" / "configs" / "resnet50.yaml"
    cfg = print_config(
        capsys,
        "--config",
        str(path),
        "--trainer.precision",
        "bf16-mixed",
        "--trainer.sync_batchnorm",
        "true",
        "--trainer.strategy",
        "ddp",
        "--trainer.devices",
        "2",
    )
    assert cfg["trainer"]["precision"] == "bf16-mixed"
    assert cfg["trainer"]["sync_batchnorm"] is True
    assert cfg["trainer"]["strategy"] == "ddp"
    with pytest.raises(SystemExit):
        main(["fit", "--config", "no_such_config"])


# ---- end to end (subprocesses) ------------------------------------------------------------
@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> dict:
    """One short `ftlight fit` with the bundled efficientnet_lite0 config (offline weights)."""
    work = tmp_path_factory.mktemp("cli")
    make_image_folder(work / "imgs", classes=("cat", "dog"), per_class=16)
    proc = ftlight(
        "fit",
        "--config",
        "efficientnet_lite0",
        "--data.root",
        "imgs",
        "--model.image_size",
        "32",
        "--data.batch_size",
        "8",
        "--data.num_workers",
        "0",
        "--data.test_split",
        "0.25",
        "--trainer.max_epochs",
        "1",
        "--trainer.default_root_dir",
        "run",
        "--trainer.enable_progress_bar",
        "false",
        cwd=work,
    )
    log_dir = work / "run" / "logs" / "version_0"
    return {
        "work": work,
        "proc": proc,
        "log_dir": log_dir,
        "last": work / "run/logs/version_0/checkpoints/last.ckpt",
    }


@pytest.mark.slow
def test_fit_writes_checkpoints_metrics_and_label_map(fitted) -> None:
    out = fitted["proc"].stdout
    assert "checkpoints:" in out and "metrics:" in out
    assert fitted["last"].is_file()
    with (fitted["log_dir"] / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert any(r.get("val_acc") for r in rows)
    assert (fitted["log_dir"] / "config.yaml").is_file()
    ckpt = torch.load(fitted["last"], map_location="cpu", weights_only=False)
    meta = ckpt["ftlight"]
    # Data -> model: class names; weights -> data: the backbone's preprocessing.
    assert meta["class_names"] == ["cat", "dog"]
    assert ckpt["hyper_parameters"]["num_classes"] == 2
    assert meta["data_config"]["mean"] == [0.5, 0.5, 0.5] or meta["data_config"]["mean"] == (
        0.5,
        0.5,
        0.5,
    )
    assert meta["data_config"]["input_size"][-1] == 32
    assert meta["weights_info"]["source"] != "random"
    assert ckpt["hyper_parameters"]["weights"] is None
    summary = json.loads((fitted["log_dir"] / "metrics.json").read_text())
    assert summary["class_names"] == ["cat", "dog"] and "val_acc" in summary
    # The default augmentation is said out loud.
    # The bundled config trains without augmentation (so the frozen phase can cache).
    shown = next(line for line in out.splitlines() if line.startswith("ftlight: train transforms"))
    assert "Random" not in shown and "--data.augment true adds" in shown, shown


@pytest.mark.slow
def test_validate_and_test_from_checkpoint(fitted) -> None:
    config = str(fitted["log_dir"] / "config.yaml")
    for command, metric in (("validate", "val_acc"), ("test", "test_acc")):
        proc = ftlight(
            command,
            "--config",
            config,
            "--ckpt_path",
            str(fitted["last"]),
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
            cwd=fitted["work"],
        )
        assert metric in proc.stdout, proc.stdout
        # It names the checkpoint it evaluated, and no checkpoint folder it never wrote.
        assert f"checkpoint: {fitted['last']}" in proc.stdout
        assert "checkpoints:" not in proc.stdout
        assert "without --ckpt_path" not in proc.stderr
    # Without a checkpoint the untrained head is scored: said, not silent.
    proc = ftlight("validate", "--config", config, "--trainer.logger", "false", cwd=fitted["work"])
    warning = [line for line in proc.stderr.splitlines() if "without --ckpt_path" in line]
    assert len(warning) == 1 and "untrained" in warning[0], proc.stderr


@pytest.mark.slow
def test_predict_csv_and_class_name_mismatch(fitted) -> None:
    work = fitted["work"]
    proc = ftlight("predict", str(fitted["last"]), "imgs", "-o", "preds.csv", "-k", "2", cwd=work)
    assert "accuracy on 32 labelled images" in proc.stdout
    with (work / "preds.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 32
    assert set(rows[0]) == {"path", "pred_1", "prob_1", "pred_2", "prob_2", "label"}
    for row in rows:
        assert {row["pred_1"], row["pred_2"]} == {"cat", "dog"}
        assert float(row["prob_1"]) + float(row["prob_2"]) == pytest.approx(1.0, abs=1e-4)
        assert float(row["prob_1"]) >= float(row["prob_2"])

    make_image_folder(work / "other", classes=("cat", "bird"), per_class=2)
    (work / "list.txt").write_text(f"{work / 'other/cat/0.png'}\n{work / 'other/bird/1.png'}\n")
    proc = ftlight("predict", str(fitted["last"]), "other", "-o", "o.csv", "--strict", cwd=work)
    assert proc.returncode == 3
    assert "differ" in proc.stderr and "bird" in proc.stderr
    proc = ftlight("predict", str(fitted["last"]), "list.txt", "-o", "l.csv", cwd=work)
    with (work / "l.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 2


def _onnx_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) for m in ("onnx", "onnxruntime", "onnxscript"))


@pytest.fixture(scope="module")
def exported(fitted) -> dict:
    """One `ftlight export --format torchscript onnx` of the fitted checkpoint (one process
    for both formats; the in-process export tests check a single format's file list)."""
    formats = ["torchscript", "onnx"] if _onnx_available() else ["torchscript"]
    proc = ftlight(
        "export", str(fitted["last"]), "-o", "exp", "--format", *formats, cwd=fitted["work"]
    )
    meta = json.loads((fitted["work"] / "exp" / "model.json").read_text())
    return {"proc": proc, "meta": meta, "dir": fitted["work"] / "exp"}


@pytest.mark.slow
def test_export_torchscript_reproduces_checkpoint(fitted, exported) -> None:
    work = fitted["work"]
    assert "torchscript" in exported["proc"].stdout
    meta = exported["meta"]
    assert meta["class_names"] == ["cat", "dog"]
    assert meta["preprocessing"]["input_size"][-1] == 32
    # Reload and run on real images with the exported preprocessing: same as the checkpoint.
    scripted = torch.jit.load(str(exported["dir"] / "model.ts"))
    transform = eval_transform(DataConfig.from_dict(meta["preprocessing"]))
    paths = sorted((work / "imgs").rglob("*.png"))[:6]
    batch = torch.stack([transform(load_rgb(p)) for p in paths])
    model = FineTuner.from_checkpoint(fitted["last"])
    with torch.no_grad():
        expected = model.probabilities(model(batch))
        got = scripted(batch)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_export_onnx_reproduces_checkpoint(fitted, exported) -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    work = fitted["work"]
    meta = exported["meta"]
    assert meta["files"] == {"torchscript": "model.ts", "onnx": "model.onnx"}
    assert sorted(p.name for p in exported["dir"].iterdir()) == [
        "model.json",
        "model.onnx",
        "model.ts",
    ]
    transform = eval_transform(DataConfig.from_dict(meta["preprocessing"]))
    paths = sorted((work / "imgs").rglob("*.png"))[-5:]
    batch = torch.stack([transform(load_rgb(p)) for p in paths])
    session = ort.InferenceSession(str(exported["dir"] / "model.onnx"))
    (got,) = session.run(None, {"images": batch.numpy()})
    model = FineTuner.from_checkpoint(fitted["last"])
    with torch.no_grad():
        expected = model.probabilities(model(batch))
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)


RESNET = [
    "--model.backbone=resnet18",
    "--model.image_size=32",
    "--model.freeze=true",
    "--data.root=imgs",
    "--data.num_workers=0",
    "--data.batch_size=8",
    "--trainer.default_root_dir=run",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--staged.milestones=[{epoch: 1, groups: [stage4], lr: 0.01}]",
]


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory) -> Path:
    """A 1-epoch resnet18 fit (random weights, stage4 scheduled at epoch 1) in ``run``; each
    resume test continues it in its own copy of the folder."""
    work = tmp_path_factory.mktemp("resume_cli")
    make_image_folder(work / "imgs", classes=("cat", "dog"), per_class=8)
    ftlight("fit", *RESNET, "--model.weights=null", "--trainer.max_epochs=1", cwd=work)
    return work


@pytest.mark.slow
def test_cli_resume_with_ckpt_path_last_unfreezes_on_time(one_epoch_run, tmp_path) -> None:
    """`--ckpt_path last` finds the previous run's checkpoint; stage4 trains from epoch 1."""
    work = shutil.copytree(one_epoch_run, tmp_path / "work")
    runs = work / "run" / "logs"
    before = torch.load(runs / "version_0/checkpoints/last.ckpt", weights_only=False)
    ftlight(
        "fit",
        *RESNET,
        "--model.weights=null",
        "--trainer.max_epochs=2",
        "--ckpt_path=last",
        cwd=work,
    )
    after = torch.load(runs / "version_1/checkpoints/last.ckpt", weights_only=False)
    assert after["epoch"] == 1 and before["epoch"] == 0
    state = next(v for k, v in after["callbacks"].items() if "StagedUnfreeze" in k)
    assert state["phase"] == 1

    def moved(prefix: str) -> bool:
        return any(
            not torch.equal(v, after["state_dict"][k])
            for k, v in before["state_dict"].items()
            if k.startswith(prefix) and v.is_floating_point() and "running" not in k
        )

    assert moved("backbone.model.layer4.")
    assert not moved("backbone.model.layer1.")


@pytest.mark.slow
def test_resume_needs_no_hub_weights_but_a_missing_checkpoint_still_does(
    one_epoch_run, tmp_path
) -> None:
    """Resuming replaces every weight from the checkpoint: it must work offline."""
    import os

    work = shutil.copytree(one_epoch_run, tmp_path / "work")
    offline = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "TORCH_HOME": str(tmp_path / "torch"),
    }
    run = [
        sys.executable,
        "-m",
        "ftlight.cli",
        "fit",
        *RESNET,
        "--model.weights=imagenet",
        "--trainer.max_epochs=2",
    ]
    resumed = subprocess.run(
        [*run, "--ckpt_path=last"],
        cwd=work,
        env=offline,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    last = work / "run" / "logs" / "version_1" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False)["epoch"] == 1
    fresh = subprocess.run(
        [*run, "--trainer.default_root_dir=other", "--ckpt_path=last"],
        cwd=work,
        env=offline,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert fresh.returncode != 0  # nothing to resume: the weights are needed, never random
    assert "Could not get ImageNet weights for 'resnet18'" in fresh.stderr


# ---- the command line speaks to its user (subprocesses; each fails or ends fast) ---------
TINY = [
    "--model.backbone=mobilenetv3_small_050",
    "--model.weights=null",
    "--model.image_size=32",
    "--data.num_workers=0",
    "--data.batch_size=4",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.default_root_dir=run",
]


def run_cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """``ftlight ARGS`` without asserting success; never in debug mode unless ``env`` says so."""
    import os

    environ = {k: v for k, v in os.environ.items() if k != "FTLIGHT_DEBUG"}
    return subprocess.run(
        [sys.executable, "-m", "ftlight.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**environ, **(env or {})},
    )


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The single ``ftlight: error:`` line of a failed command (and no traceback)."""
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ftlight: error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def no_run_folders(root: Path) -> bool:
    return not list((root / "logs").glob("version_*"))


def test_corrupt_image_is_one_line_naming_the_flag_and_leaves_no_run_folder(tmp_path) -> None:
    make_image_folder(tmp_path / "imgs", classes=("cat", "dog"), per_class=4, size=32)
    (tmp_path / "imgs" / "cat" / "broken.png").write_bytes(b"not a png")
    proc = run_cli("fit", *TINY, "--data.root=imgs", cwd=tmp_path)
    line = one_error_line(proc)
    assert "broken.png" in line and "--data.skip_corrupt true" in line
    assert "skip_corrupt=True" not in line  # the Python spelling is not shown to CLI users
    assert no_run_folders(tmp_path / "run")


def test_unavailable_weights_are_one_line_in_cli_terms(tmp_path) -> None:
    make_image_folder(tmp_path / "imgs", classes=("cat", "dog"), per_class=4, size=32)
    args = [a for a in TINY if not a.startswith("--model.weights")]
    offline = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    offline["TORCH_HOME"] = str(tmp_path / "torch")
    proc = run_cli(
        "fit", *args, "--model.weights=imagenet", "--data.root=imgs", cwd=tmp_path, env=offline
    )
    line = one_error_line(proc)
    assert "mobilenetv3_small_050" in line
    assert "--model.weights PATH" in line and "HF_HUB_OFFLINE=1" in line
    assert "weights='/path" not in line  # the Python spelling of the fix is cut
    assert no_run_folders(tmp_path / "run")


@pytest.fixture(scope="module")
def fit_nowhere(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """`ftlight fit` without --config on a missing data folder (shared by two tests)."""
    work = tmp_path_factory.mktemp("nowhere")
    return run_cli("fit", *TINY, "--data.root=nowhere", cwd=work), work


def test_missing_data_folder_is_one_line_and_debug_shows_the_traceback(fit_nowhere) -> None:
    proc, tmp_path = fit_nowhere
    assert "nowhere" in one_error_line(proc)
    for how in ({"FTLIGHT_DEBUG": "1"}, None):
        extra = [] if how else ["--debug"]
        proc = run_cli("fit", *TINY, "--data.root=nowhere", *extra, cwd=tmp_path, env=how)
        assert proc.returncode != 0
        assert "Traceback" in proc.stderr and "DataFolderNotFoundError" in proc.stderr


def test_unreadable_checkpoint_is_one_line(tmp_path) -> None:
    make_image_folder(tmp_path / "imgs", classes=("cat", "dog"), per_class=4, size=32)
    (tmp_path / "garbage.ckpt").write_bytes(b"\x00garbage" * 10)
    for command in ("fit", "test"):
        proc = run_cli(command, *TINY, "--data.root=imgs", "--ckpt_path=garbage.ckpt", cwd=tmp_path)
        line = one_error_line(proc)
        assert "garbage.ckpt is unrecognised binary data" in line, line
        assert "not a checkpoint written by `ftlight fit`" in line, line
    proc = run_cli("validate", *TINY, "--data.root=imgs", "--ckpt_path=gone.ckpt", cwd=tmp_path)
    assert "--ckpt_path gone.ckpt: no such checkpoint file" in one_error_line(proc)
    assert no_run_folders(tmp_path / "run")


def test_fit_without_config_warns_about_random_weights(fit_nowhere) -> None:
    # (With --config the warning is absent: tests/test_cli_errors.py's "fit" case.)
    proc, _ = fit_nowhere
    warning = [line for line in proc.stderr.splitlines() if "no --config given" in line]
    assert len(warning) == 1 and "random weights" in warning[0]
    for name in CONFIGS:
        assert name in warning[0]


@pytest.mark.slow
def test_fast_dev_run_finishes_and_prints_its_train_transforms(tmp_path) -> None:
    make_image_folder(tmp_path / "imgs", classes=("cat", "dog"), per_class=4, size=32)
    proc = run_cli("fit", *TINY, "--data.root=imgs", "--trainer.fast_dev_run=true", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "ftlight: run finished." in proc.stdout
    shown = [line for line in proc.stdout.splitlines() if "train transforms:" in line]
    assert len(shown) == 1 and "RandomResizedCrop" in shown[0]
    assert "RandomHorizontalFlip" in shown[0] and "--data.hflip false" in shown[0]
    for line in proc.stdout.splitlines():  # every path printed exists
        if line.strip().startswith(("checkpoints:", "best:", "last:", "config:")):
            assert (tmp_path / line.split(":", 1)[1].strip()).exists(), line
    proc = run_cli(
        "fit",
        *TINY,
        "--data.root=imgs",
        "--trainer.fast_dev_run=true",
        "--data.hflip=false",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    shown = [line for line in proc.stdout.splitlines() if "train transforms:" in line]
    assert len(shown) == 1 and "RandomHorizontalFlip" not in shown[0]


@pytest.mark.slow
def test_report_finds_the_runs_under_a_default_root_dir(fitted) -> None:
    proc = ftlight("report", "run", cwd=fitted["work"])
    assert "run/logs/version_0/report.md" in proc.stdout
    proc = run_cli("report", "nowhere", cwd=fitted["work"])
    assert "nowhere" in one_error_line(proc)
