"""pyproject.toml: the same pins as requirements*.txt, every package listed, entry points that resolve."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirement_lines(name: str) -> list[str]:
    lines = (ROOT / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith(("#", "-r"))]


def test_dependencies_are_the_requirements_files_pins():
    assert PROJECT["project"]["dependencies"] == requirement_lines("requirements.txt")
    assert PROJECT["project"]["optional-dependencies"]["test"] == requirement_lines("requirements-test.txt")


def test_the_ray_extra_is_tested_but_not_installed_by_default():
    ray = PROJECT["project"]["optional-dependencies"]["ray"]
    assert ray == ["ray[data]==2.60.0"]
    assert set(ray) <= set(requirement_lines("requirements-test.txt"))  # CI (pip install .[test]) runs the engine
    assert not any(line.startswith("ray") for line in requirement_lines("requirements.txt"))  # nor the Space


def test_every_python_package_under_psfh_is_installed():
    on_disk = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "psfh").rglob("__init__.py")}
    listed = set(PROJECT["tool"]["setuptools"]["packages"])
    assert on_disk | {"psfh.model.embedded"} == listed


def test_the_embedded_package_is_package_data():
    source = PROJECT["tool"]["setuptools"]["package-dir"]["psfh.model.embedded"]
    patterns = PROJECT["tool"]["setuptools"]["package-data"]["psfh.model.embedded"]
    shipped = {path for pattern in patterns for path in (ROOT / source).glob(pattern)}
    every_file = {path for path in (ROOT / source).rglob("*") if path.is_file()}
    assert every_file and shipped == every_file


@pytest.mark.parametrize("command", sorted(PROJECT["project"]["scripts"]))
def test_entry_points_name_a_cli_main(command):
    module_name, function = PROJECT["project"]["scripts"][command].split(":")
    assert module_name.startswith("psfh.cli.") and function == "main"
    assert callable(getattr(importlib.import_module(module_name), function))
