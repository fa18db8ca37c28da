"""Resume and checkpoints are what they say (real ``ftlight fit`` subprocesses, tiny runs).

* ``last.ckpt`` is the newest state, also when ``val_loss`` stopped improving;
* each run writes its own ``logs/version_N/checkpoints``, never touching another run's;
* ``--ckpt_path last`` resumes the newest run and continues exactly where it stopped;
* resuming, validating or testing on other classes is refused, naming both lists;
* flags that differ from the checkpoint are reported, and a new learning rate is applied.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from ftlight import FineTuner
from ftlight.data import ImageDataModule
from tests.conftest import make_image_folder, quiet_trainer

REPO = Path(__file__).parents[1]

# 16 training images in batches of 4: 4 steps per epoch. Deterministic, no augmentation.
COMMON = [
    "--model.backbone=mobilenetv3_small_050",
    "--model.weights=null",
    "--model.image_size=32",
    "--model.lr=0.01",
    "--data.root=imgs",
    "--data.augment=false",
    "--data.num_workers=0",
    "--data.batch_size=4",
    "--trainer.accelerator=cpu",
    "--trainer.deterministic=true",
    "--trainer.enable_model_summary=false",
    "--trainer.enable_progress_bar=false",
    "--seed_everything=0",
]
STEPS_PER_EPOCH = 4


def ftlight(work: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("FTLIGHT_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "ftlight.cli", *args],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def fit(work: Path, root: str, *extra: str) -> subprocess.CompletedProcess:
    proc = ftlight(work, "fit", *COMMON, f"--trainer.default_root_dir={root}", *extra)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def printed(proc: subprocess.CompletedProcess, what: str) -> Path:
    """The path printed after ``what:`` in the end-of-run summary (relative to the cwd)."""
    marker = f"{what}: "
    found = [
        line.split(marker, 1)[1].strip() for line in proc.stdout.splitlines() if marker in line
    ]
    assert len(found) == 1, proc.stdout
    return Path(found[0])


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.ckpt"))
    }


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(
        float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point()
    )


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Training images, and validation images with the two classes swapped: val_loss gets
    worse after the first epoch, so the best checkpoint stops changing."""
    work = tmp_path_factory.mktemp("resume")
    make_image_folder(work / "imgs", classes=("blue", "red"), per_class=8, size=32)
    train = work / "imgs" / "train"
    train.mkdir()
    for name in ("blue", "red"):
        shutil.move(work / "imgs" / name, train / name)
    for name, other in (("blue", "red"), ("red", "blue")):
        (work / "imgs" / "val" / other).mkdir(parents=True)
        for i in range(4):
            shutil.copy(train / name / f"{i}.png", work / "imgs" / "val" / other / f"{i}.png")
    make_image_folder(work / "other", classes=("cat", "dog"), per_class=4, size=32)
    return work


@pytest.fixture(scope="module")
def uninterrupted(work: Path) -> subprocess.CompletedProcess:
    """A 3-epoch run in ``a``."""
    return fit(work, "a", "--trainer.max_epochs=3")


@pytest.fixture(scope="module")
def runs(work: Path, uninterrupted) -> dict:
    """The uninterrupted run ``a``; in ``b`` a 1-epoch run, then a 2-epoch run, then
    ``--ckpt_path last`` up to 3 epochs: all three in the same default_root_dir."""
    a = uninterrupted
    b0 = fit(work, "b", "--trainer.max_epochs=1")
    b0_files = digest(work / "b")
    b1 = fit(work, "b", "--trainer.max_epochs=2")
    b1_files = digest(work / "b")
    resumed = fit(work, "b", "--trainer.max_epochs=3", "--ckpt_path=last")
    return {
        "a": a,
        "b0": b0,
        "b1": b1,
        "resumed": resumed,
        "b0_files": b0_files,
        "b1_files": b1_files,
    }


@pytest.mark.slow
def test_last_checkpoint_is_the_newest_state_when_val_loss_stops_improving(work, runs) -> None:
    b1 = runs["b1"]
    best, last = work / printed(b1, "best"), work / printed(b1, "last")
    assert "epoch=0" in best.name  # the scenario: val_loss got worse after epoch 0
    state = load(last)
    assert state["epoch"] == 1 and state["global_step"] == 2 * STEPS_PER_EPOCH
    assert load(best)["global_step"] == STEPS_PER_EPOCH


@pytest.mark.slow
def test_resume_last_continues_from_the_last_epoch_like_an_uninterrupted_run(work, runs) -> None:
    resumed = runs["resumed"]
    b1_last = work / printed(runs["b1"], "last")
    assert f"resuming from {b1_last.relative_to(work)}" in resumed.stderr, resumed.stderr
    final = load(work / printed(resumed, "last"))
    reference = load(work / printed(runs["a"], "last"))
    assert final["global_step"] == reference["global_step"] == 3 * STEPS_PER_EPOCH
    difference = max_difference(final["state_dict"], reference["state_dict"])
    print(f"resumed vs uninterrupted: max |weight difference| = {difference:.3g}")
    assert difference <= 1e-6
    # One epoch was trained after the resume, not two.
    log_dir = work / printed(resumed, "metrics").parent
    record = json.loads((log_dir / "metrics.json").read_text())
    assert [e["epoch"] for e in record["epochs"]] == [2]


@pytest.mark.slow
def test_each_run_keeps_its_own_checkpoints(work, runs) -> None:
    lasts = [work / printed(runs[k], "last") for k in ("b0", "b1", "resumed")]
    assert len({p.parent for p in lasts}) == 3  # three folders
    assert all(p.is_file() for p in lasts)
    for key in ("b0", "b1", "resumed"):
        folder = (work / printed(runs[key], "checkpoints")).resolve()
        assert folder.is_dir() and folder.parent.parent == (work / "b" / "logs").resolve()
    # Later runs (the resume included) never replaced or deleted an earlier run's files.
    now = digest(work / "b")
    assert {k: now[k] for k in runs["b0_files"]} == runs["b0_files"]
    assert {k: now[k] for k in runs["b1_files"]} == runs["b1_files"]
    assert len(now) > len(runs["b1_files"]) > len(runs["b0_files"]) > 0


@pytest.mark.slow
@pytest.mark.parametrize("command", ["fit", "validate", "test"])
def test_checkpoint_on_data_with_other_classes_is_refused(work, uninterrupted, command) -> None:
    ckpt = printed(uninterrupted, "last")
    before = sorted((work / "c").rglob("*")) if (work / "c").exists() else []
    extra = ["--trainer.max_epochs=4"] if command == "fit" else []
    proc = ftlight(
        work,
        command,
        *COMMON,
        "--data.root=other",
        "--data.test_split=0.5",
        "--trainer.default_root_dir=c",
        f"--ckpt_path={ckpt}",
        *extra,
    )
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ftlight: error:")]
    assert len(errors) == 1, proc.stderr
    assert "['cat', 'dog']" in errors[0] and "['blue', 'red']" in errors[0]
    # A failed start leaves no empty run folder behind.
    after = sorted((work / "c").rglob("*")) if (work / "c").exists() else []
    assert after == before


@pytest.mark.slow
def test_flags_that_differ_from_the_checkpoint_are_reported_and_lr_applied(
    work, uninterrupted
) -> None:
    ckpt = printed(uninterrupted, "last")
    # The first run had lr 0.01 and no dropout; change the lr, the dropout and the backbone.
    proc = fit(
        work,
        "d",
        "--trainer.max_epochs=4",
        f"--ckpt_path={ckpt}",
        "--model.lr=0.001",
        "--model.dropout=0.25",
        "--model.backbone=resnet18",
    )
    notes = [line for line in proc.stderr.splitlines() if line.startswith("ftlight: resume:")]
    assert len(notes) == 3, proc.stderr
    text = "\n".join(notes)
    assert "--model.lr=0.001 is used (the checkpoint had 0.01)" in text
    assert "--model.dropout=0.25 is ignored: the checkpoint's 0.0 is used" in text
    assert "--model.backbone=resnet18 is ignored: the checkpoint's mobilenetv3_small_050" in text
    state = load(work / printed(proc, "last"))
    assert state["global_step"] == 4 * STEPS_PER_EPOCH
    lrs = {g["name"]: g["lr"] for g in state["optimizer_states"][0]["param_groups"]}
    assert lrs["head"] == pytest.approx(0.001)
    assert len(lrs) > 1 and all(lr == pytest.approx(0.0001) for n, lr in lrs.items() if n != "head")
    assert state["hyper_parameters"]["lr"] == pytest.approx(0.001)
    config = yaml.safe_load((work / printed(proc, "config")).read_text())
    assert config["model"]["lr"] == pytest.approx(0.001)
    assert config["model"]["dropout"] == 0.0
    assert config["model"]["backbone"] == "mobilenetv3_small_050"


@pytest.mark.slow
def test_resume_without_flags_keeps_the_checkpoints_settings(work, uninterrupted) -> None:
    """Flags not given take the checkpoint's values: a resume continues the same model."""
    ckpt = printed(uninterrupted, "last")
    args = [a for a in COMMON if not a.startswith(("--model.lr", "--model.backbone"))]
    proc = ftlight(
        work,
        "fit",
        *args,
        "--trainer.default_root_dir=e",
        "--trainer.max_epochs=4",
        f"--ckpt_path={ckpt}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ftlight: resume:" not in proc.stderr
    config = yaml.safe_load((work / printed(proc, "config")).read_text())
    assert config["model"]["backbone"] == "mobilenetv3_small_050"
    assert config["model"]["lr"] == pytest.approx(0.01)
    state = load(work / printed(proc, "last"))
    lrs = {g["name"]: g["lr"] for g in state["optimizer_states"][0]["param_groups"]}
    assert lrs["head"] == pytest.approx(0.01)


class LearningRates(L.Callback):
    """The optimizer's learning rates and the scheduler's bases before the first step."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not hasattr(self, "lrs"):
            self.lrs = [g["lr"] for g in trainer.optimizers[0].param_groups]
            self.bases = list(trainer.lr_scheduler_configs[0].scheduler.base_lrs)


class StopAfterOneEpoch(L.Callback):
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        trainer.should_stop = True


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["cosine", "onecycle"])
def test_a_new_lr_on_resume_scales_the_restored_schedule(tmp_path, colour_arrays, scheduler):
    """In process: the restored optimizer and LR schedule take the new rate; same lr: exact."""
    x, y = colour_arrays
    dm = ImageDataModule.from_arrays(x, y, batch_size=8, num_workers=0)

    def model(lr: float) -> FineTuner:
        return FineTuner(
            "mobilenetv3_small_050", 2, weights=None, image_size=32, lr=lr, scheduler=scheduler
        )

    def trainer(**kwargs) -> L.Trainer:
        limits = {"limit_train_batches": 2, "limit_val_batches": 1, "num_sanity_val_steps": None}
        return quiet_trainer(tmp_path, **limits, **kwargs)

    first = trainer(max_epochs=3, callbacks=[StopAfterOneEpoch()])  # mid-schedule
    first.fit(model(0.01), dm)
    first.save_checkpoint(tmp_path / "a.ckpt")
    saved = torch.load(tmp_path / "a.ckpt", weights_only=False)
    lrs = [g["lr"] for g in saved["optimizer_states"][0]["param_groups"]]
    bases = saved["lr_schedulers"][0]["base_lrs"]
    for lr, factor in ((0.01, 1.0), (0.005, 0.5)):
        probe = LearningRates()
        trainer(max_epochs=3, callbacks=[probe]).fit(model(lr), dm, ckpt_path=tmp_path / "a.ckpt")
        assert probe.lrs == pytest.approx([v * factor for v in lrs], rel=1e-12)
        assert probe.bases == pytest.approx([v * factor for v in bases], rel=1e-12)
    assert len(set(lrs)) > 1 and min(lrs) > 0  # head and backbone rates, each scaled
