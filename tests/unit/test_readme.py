"""The README stays true to the settings and the quick start."""

import dataclasses
from pathlib import Path

from ray_backup.settings import CONFIG_ENV, Settings

README = (Path(__file__).parents[2] / "README.md").read_text()


def test_every_setting_is_documented():
    names = [f.metadata["env"] for f in dataclasses.fields(Settings)] + [CONFIG_ENV]
    assert [n for n in names if f"`{n}`" not in README] == []


def test_quick_start_is_the_demo_then_the_test_command():
    commands = [line for line in README.split("## Quick start")[1].splitlines() if line.startswith("python3")]
    assert commands[0].endswith("ray-backup demo")
    assert commands[1].endswith("python -m pytest")
    ci = (Path(__file__).parents[2] / ".ci" / "run").read_text()
    assert "pip install -e '.[test]'" in ci and "-m pytest" in ci
