"""The two-process architecture, checked on the source: imports may only point one way.

Parsed with ``ast`` (imports inside functions count too), so this fails the build the moment
someone imports TensorFlow into the QGIS side or QGIS into the engine.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "segment_plugin"
ENGINE = PACKAGE / "engine"
QT_OR_QGIS = {"qgis", "PyQt5", "PyQt6", "PySide2", "PySide6", "sip"}
ENGINE_ONLY = {"tensorflow", "keras", "rasterio", "geopandas", "shapely", "pyogrio", "numpy"}


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module a file imports (absolute imports)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def python_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_walk_finds_both_sides():
    engine_files = python_files(ENGINE)
    qgis_files = [p for p in python_files(PACKAGE) if ENGINE not in p.parents]
    assert len(engine_files) >= 5 and len(qgis_files) >= 5


@pytest.mark.parametrize("path", python_files(ENGINE), ids=lambda p: str(p.relative_to(ROOT)))
def test_engine_never_imports_qgis_or_qt(path):
    assert not imported_modules(path) & QT_OR_QGIS


@pytest.mark.parametrize(
    "path",
    [p for p in python_files(PACKAGE) if ENGINE not in p.parents],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_qgis_side_never_imports_engine_libraries(path):
    assert not imported_modules(path) & ENGINE_ONLY


def is_engine_module(name: str) -> bool:
    return name == "segment_plugin.engine" or name.startswith("segment_plugin.engine.")


def test_qgis_side_never_imports_the_engine_package():
    """The QGIS side talks to the engine only through the subprocess protocol."""
    for path in python_files(PACKAGE):
        if ENGINE in path.parents:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not is_engine_module(node.module), path
                if node.module == "segment_plugin":
                    assert "engine" not in {alias.name for alias in node.names}, path
            if isinstance(node, ast.Import):
                assert not any(is_engine_module(alias.name) for alias in node.names), path


def test_engine_module_matcher():
    assert is_engine_module("segment_plugin.engine.cli")
    assert not is_engine_module("segment_plugin.engine_setup")


def test_checker_catches_a_violation(tmp_path):
    """The checker itself must see imports nested in functions and ``from x.y import z``."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from tensorflow.keras import layers\n    import qgis.core\n")
    assert imported_modules(bad) == {"tensorflow", "qgis"}


def test_top_level_layout():
    expected = {"segment_plugin", "metadata.txt", "resources", "tests", "Makefile", "README.md"}
    expected |= {"pyproject.toml", ".ci"}
    present = {p.name for p in ROOT.iterdir()}
    assert expected <= present
    assert (ROOT / ".ci" / "run").is_file()


def test_changelog_and_metadata_txt_are_in_step():
    """metadata.txt's changelog= repeats each CHANGELOG.md version's summary line, newest first."""
    import configparser
    import re

    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    sections = re.findall(r"^## (\S+)\n\n(.+)$", changelog, flags=re.M)
    metadata = configparser.ConfigParser()
    metadata.read(ROOT / "metadata.txt", encoding="utf-8")
    general = metadata["general"]
    entries = [line.split(" ", 1) for line in general["changelog"].strip().splitlines()]
    assert [tuple(entry) for entry in entries] == sections
    assert sections[0][0] == general["version"]  # the newest entry is this version


def test_readme_is_a_landing_page():
    """Reference material lives in docs/ (make docs); the README stays short."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200
