"""What the README tells a new user about the command line is what the code does."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import yaml

from ftlight.cli.errors import EXIT_CLASS_MISMATCH, EXIT_ERROR, EXIT_USAGE, PREFIX
from ftlight.cli.main import CONFIG_DIR, ShowTrainTransforms, main

README = (Path(__file__).parents[1] / "README.md").read_text()
FLAT = " ".join(README.split())  # line breaks inside sentences do not matter


def test_every_fit_flag_the_readme_names_exists(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["fit", "--help"])
    assert info.value.code == 0
    help_text = capsys.readouterr().out
    named = set(re.findall(r"--(?:data|model|trainer|checkpoint|staged)\.[a-z_]+", README))
    assert {"--data.hflip", "--data.augment", "--data.root"} <= named
    missing = sorted(flag for flag in named if f"{flag} " not in help_text)
    assert not missing, f"README names flags `ftlight fit --help` does not list: {missing}"


def test_the_readme_describes_the_bundled_configs_transforms_as_printed() -> None:
    for config in CONFIG_DIR.glob("*.yaml"):  # no random augmentation in any bundled config
        assert yaml.safe_load(config.read_text())["data"]["augment"] is False, config.name
    printed = re.search(r'"(no augmentation; [^"]+)"', inspect.getsource(ShowTrainTransforms))
    assert printed and printed.group(1) in FLAT  # the README quotes the line the CLI prints
    assert "After the model summary table, just before the first epoch's progress bar" in FLAT
    assert "By default they include random horizontal flips" not in FLAT


def test_the_readme_states_the_exit_codes_the_cli_uses() -> None:
    assert (EXIT_ERROR, EXIT_USAGE, EXIT_CLASS_MISMATCH) == (1, 2, 3)
    assert f"`{PREFIX} …`" in FLAT
    for said in ("and exit code 1", "exits with code 2", "exits with code 3"):
        assert said in FLAT, said
