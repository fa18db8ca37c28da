"""Every subcommand ends a known error the same way (ftlight.cli.errors): one
``ftlight: error: ...`` line on standard error, no traceback, exit code 1; a usage mistake
exits with 2. Each command runs in its own real process, as a user types it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ftlight import ImageDataModule
from ftlight.cli.errors import EXIT_ERROR, EXIT_USAGE, PREFIX
from ftlight.cli.main import main
from ftlight.data import DataFolderNotFoundError

ROOT = Path(__file__).parents[1]


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FTLIGHT_DEBUG": "0", "HF_HUB_OFFLINE": "1"}
    env["OMP_NUM_THREADS"] = "1"  # seven at once on a small machine
    return subprocess.Popen(
        [sys.executable, "-m", "ftlight.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow  # seven processes, each importing torch and Lightning (~10 s of CPU each)
def test_every_subcommand_reports_a_known_error_in_one_line_with_exit_code_1(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "no_such_folder"
    foreign = tmp_path / "mine" / "data" / "cats"  # a data folder the demo did not write
    foreign.mkdir(parents=True)
    cases = {  # command line -> what its one line must say
        "fit": (
            ["fit", "--config", "efficientnet_lite0", "--data.root", "no_such_folder"],
            ["--data.root no_such_folder: no such folder", f"resolved to {missing}"],
        ),
        "validate": (
            ["validate", "--data.root", str(missing)],
            [f"--data.root {missing}: no such folder"],
        ),
        "test": (
            ["test", "--data.root", str(tmp_path), "--ckpt_path", "gone.ckpt"],
            ["--ckpt_path gone.ckpt: no such checkpoint file"],
        ),
        "predict": (
            ["predict", "gone.ckpt", "no_such_folder", "-o", "p.csv"],
            ["input no_such_folder: no such image, folder or file list", str(missing)],
        ),
        "export": (["export", "gone.ckpt", "-o", "exported"], ["gone.ckpt: no such file"]),
        "report": (["report", "no_such_folder"], ["RUN_DIR no_such_folder: no such folder"]),
        "demo": (
            ["demo", "--out", "mine"],
            ["mine/data exists and was not written by ftlight demo"],
        ),
    }
    # All at once: each process spends its time importing torch and Lightning.
    procs = {name: _start(args, tmp_path) for name, (args, _) in cases.items()}
    results = {name: (proc, *proc.communicate(timeout=300)) for name, proc in procs.items()}
    for name, (proc, _, stderr) in results.items():
        expected = cases[name][1]
        errors = [line for line in stderr.splitlines() if line.startswith("ftlight")]
        errors = [line for line in errors if "error" in line]
        assert proc.returncode == EXIT_ERROR, f"{name}: exit {proc.returncode}\n{stderr[-3000:]}"
        assert "Traceback" not in stderr, f"{name}:\n{stderr[-3000:]}"
        assert len(errors) == 1 and errors[0].startswith(f"{PREFIX} "), f"{name}: {errors}"
        for fragment in expected:
            assert fragment in errors[0], f"{name}: {fragment!r} not in {errors[0]!r}"
    assert not (tmp_path / "p.csv").exists() and not (tmp_path / "exported").exists()
    # A bundled config starts from pre-trained weights: no random-weights warning
    # (its presence without --config: tests/test_cli.py).
    assert "no --config given" not in results["fit"][2]
    assert [p.name for p in (tmp_path / "mine" / "data").iterdir()] == ["cats"]


@pytest.mark.parametrize(
    "argv",
    [
        ["fit", "--data.rooot", "x"],  # LightningCLI's parser
        ["export", "model.ckpt", "--format", "gif"],  # argparse
        ["predict", "model.ckpt"],
        ["bogus"],
    ],
)
def test_a_usage_mistake_exits_with_code_2(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as info:
        raise SystemExit(main(argv))
    assert info.value.code == EXIT_USAGE
    assert "usage: ftlight" in capsys.readouterr().err


def test_a_mistyped_flag_is_three_lines_naming_the_close_flag(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["fit", "--data.rooot", "x"])
    assert info.value.code == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3, err  # usage, the --help tip, the error (was 103 lines)
    assert err[-1].endswith("unrecognized arguments: --data.rooot x (did you mean --data.root?)")


def test_a_missing_data_folder_names_the_setting_and_the_path_received(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("not a folder")
    for given, problem in (("nowhere/", "no such folder"), ("a_file", "is a file, not a folder")):
        data = ImageDataModule.from_folder(tmp_path / given)
        with pytest.raises(DataFolderNotFoundError) as info:
            data.setup()
        err = info.value
        assert (err.argument, err.problem) == ("root", problem)
        assert err.path == str(tmp_path / given) and err.resolved == str(tmp_path / given)
        assert f"root={str(tmp_path / given)!r}: {problem}" in str(err)
    with pytest.raises(DataFolderNotFoundError, match="root='relative/path'"):
        _ = ImageDataModule("relative/path").class_names


def test_an_unknown_config_name_is_a_known_error_in_the_convention(tmp_path, monkeypatch) -> None:
    from ftlight.cli.main import bundled_configs, resolve_config

    monkeypatch.chdir(tmp_path)  # nothing named like the config here
    with pytest.raises(SystemExit) as info:
        resolve_config("nosuchconfig")
    message = str(info.value.code)
    assert message.startswith(f"{PREFIX} --config nosuchconfig: neither a file nor a bundled")
    assert len(message.splitlines()) == 1 and str(bundled_configs()) in message


def test_resuming_with_other_parameter_groups_is_one_line_naming_the_flags() -> None:
    """Resuming with changed --staged.milestones ended in torch's optimizer traceback; the
    error torch really raises (this installed version's words) becomes the CLI's one line."""
    import torch

    from ftlight.cli.main import describe_error

    weights = [torch.nn.Parameter(torch.zeros(1)) for _ in range(3)]
    saved = torch.optim.SGD([{"params": weights[:1]}, {"params": weights[1:]}], lr=0.1)
    resumed = torch.optim.SGD([{"params": weights[:2]}, {"params": weights[2:]}], lr=0.1)
    with pytest.raises(ValueError) as info:
        resumed.load_state_dict(saved.state_dict())
    line = describe_error(info.value)
    assert line is not None and "\n" not in line
    assert "--staged.milestones" in line and "--model.weights CKPT" in line
