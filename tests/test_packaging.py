"""What a wheel ships: every package of convgen/ and the data files the code reads.
(.ci/run also installs a built wheel into a fresh venv and runs it from another folder.)"""

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

from conftest import ROOT


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_package_folder_is_shipped():
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "convgen").rglob("__init__.py")}
    assert folders <= set(_setuptools()["packages"]), f"not in pyproject's packages: {folders - set(_setuptools()['packages'])}"


def test_templates_and_targets_are_package_data():
    tool = _setuptools()
    assert tool["package-dir"] == {"convgen.templates": "templates", "convgen.targets": "specs/targets"}
    patterns = tool["package-data"]
    for package, folder in tool["package-dir"].items():
        shipped = {f for pattern in patterns[package] for f in (ROOT / folder).glob(pattern)}
        present = {f for f in (ROOT / folder).rglob("*") if f.is_file()}
        assert present == shipped, f"{package}: files not matched by package-data: {sorted(present - shipped)}"
