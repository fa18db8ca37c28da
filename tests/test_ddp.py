"""Two-process CPU DDP through the CLI matches a single process with the same global batch.

Full-batch training (the global batch is the whole training split) makes every optimizer step
the same mean gradient in both runs whatever the sampler's order, so the runs agree up to
floating-point reduction order. A staged milestone unfreezes ``stage4`` at epoch 1: if the DDP
reducer did not cover it (Lightning #20340), each rank would step on half the data and the
validation metrics would drift away from the single-process run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import make_image_folder

VAL_LOSS_TOL = 1e-4  # absolute; measured difference is ~1e-7


COMMON = [
    "--model.backbone=resnet18",
    "--model.weights=null",
    "--model.image_size=32",
    "--model.freeze=true",
    "--model.optimizer=sgd",
    "--model.lr=0.05",
    "--data.root=imgs",
    "--data.val_split=0.25",  # 24 training and 8 validation images
    "--data.augment=false",
    "--data.num_workers=0",
    "--trainer.max_epochs=3",
    "--trainer.accelerator=cpu",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.num_sanity_val_steps=0",
    "--seed_everything=0",
    "--staged.milestones=[{epoch: 1, groups: [stage4], lr: 0.05}]",
]


def fit(work: Path, root: str, *extra: str) -> dict:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ftlight.cli",
            "fit",
            *COMMON,
            f"--trainer.default_root_dir={root}",
            *extra,
        ],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads((work / root / "logs" / "version_0" / "metrics.json").read_text())


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "imgs", classes=("cat", "dog"), per_class=16, size=32)
    single = fit(tmp_path, "single", "--data.batch_size=24", "--trainer.devices=1")
    ddp = fit(
        tmp_path,
        "ddp",
        "--data.batch_size=12",  # per process: 2 x 12 = the single run's 24
        "--trainer.devices=2",
        "--trainer.strategy=ddp",  # (SyncBatchNorm needs GPUs: parse-tested in test_cli)
    )
    print(f"val_loss single={single['val_loss']:.8f} ddp={ddp['val_loss']:.8f}")
    assert ddp["staged_phase"] == single["staged_phase"] == 1.0
    assert abs(ddp["val_loss"] - single["val_loss"]) < VAL_LOSS_TOL
    assert ddp["val_acc"] == pytest.approx(single["val_acc"])
    assert ddp["val_f1"] == pytest.approx(single["val_f1"])
    # Validation covered all 8 images on the two ranks together (metrics synced).
    assert sum(map(sum, ddp["confusion_matrix"])) == 8
    # Not a vacuous match: training moved the validation loss epoch by epoch, in step.
    curve_single = [e["val_loss"] for e in single["epochs"]]
    curve_ddp = [e["val_loss"] for e in ddp["epochs"]]
    assert len(curve_single) == len(curve_ddp) == 3
    assert abs(curve_single[-1] - curve_single[0]) > 1e-3
    np.testing.assert_allclose(curve_ddp, curve_single, atol=VAL_LOSS_TOL)
