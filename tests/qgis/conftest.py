"""Fixtures for the QGIS suite (pytest-qgis gives qgis_app, qgis_iface, qgis_new_project)."""

from __future__ import annotations

import os
import subprocess
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from qgis.core import (
    QgsApplication,
    QgsFeature,
    QgsField,
    QgsGeometry,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QVariant

from segment_plugin.runner import ENV_PYTHON, locate_engine

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "build" / "screenshots"
QGIS_PROCESS = "/usr/bin/qgis_process.bin"  # /usr/bin/qgis_process passes a flag .bin rejects


def wait_until(predicate: Callable[[], bool], timeout: float = 120.0) -> None:
    """Spin the Qt event loop (tasks finish, queued signals arrive) until predicate holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout} s")
        QgsApplication.processEvents()
        time.sleep(0.02)


DOC_IMAGES = ROOT / "docs" / "images"  # pictures the docs show: made here, not by hand


def grab(widget, name: str, docs: bool = False) -> Path:
    """Save a widget as the user sees it to build/screenshots/NAME (open it to look).

    ``docs``: also to docs/images/NAME, where the user guide shows it.
    """
    SHOTS.mkdir(parents=True, exist_ok=True)
    QgsApplication.processEvents()  # let the relayout run
    assert widget.grab().save(str(SHOTS / name))
    if docs:
        (DOC_IMAGES / name).write_bytes((SHOTS / name).read_bytes())
    return SHOTS / name


LAPTOP = (1366, 768)  # the smallest screen a dialog must fit
WINDOW_CHROME = 80  # px: title bar and taskbar


def fits_a_laptop(dialog) -> list[str]:
    """Shown at its default size: what does not fit a 1366×768 screen, on every tab.

    Returns the problems: the dialog's size, and the text of each visible button narrower
    than its size hint (Qt then cuts its text, e.g. "urrent Layer Ex").
    """
    from qgis.PyQt.QtWidgets import QAbstractButton

    dialog.show()
    QgsApplication.processEvents()
    problems = []
    if dialog.width() > LAPTOP[0] or dialog.height() > LAPTOP[1] - WINDOW_CHROME:
        problems.append(f"size {dialog.width()}×{dialog.height()}")
    tabs = getattr(dialog, "tabs", None)
    for page in range(tabs.count()) if tabs is not None else [None]:
        if tabs is not None:
            tabs.setCurrentIndex(page)
            QgsApplication.processEvents()
        for button in dialog.findChildren(QAbstractButton):
            if button.isVisible() and button.text() and button.width() < button.sizeHint().width():
                problems.append(f"cut: {button.text()!r}")
    return problems


def words(text: str) -> str:
    """Text with all whitespace runs collapsed, e.g. a rendered HTML table's cells on one line."""
    return " ".join(text.split())


@pytest.fixture(scope="session")
def engine_python() -> Path:
    """The real engine of this checkout (make test exports SEGMENT_PLUGIN_PYTHON)."""
    engine = locate_engine()
    assert engine.exists, f"no engine environment ({engine.describe()}): run make setup"
    return engine.python


@pytest.fixture
def missing_engine(monkeypatch, tmp_path) -> Path:
    """Point the plugin at an engine that does not exist."""
    missing = tmp_path / "nowhere" / "bin" / "python"
    monkeypatch.setenv(ENV_PYTHON, str(missing))
    return missing


@pytest.fixture(scope="session")
def plugin_zip() -> Path:
    """dist/segment_plugin.zip, built by the real `make package`."""
    subprocess.run(["make", "-s", "package"], cwd=ROOT, check=True, timeout=300)
    return ROOT / "dist" / "segment_plugin.zip"


@pytest.fixture
def qgis_profile(tmp_path, plugin_zip) -> Path:
    """A throw-away QGIS config folder with the zip installed and the plugin enabled."""
    config = tmp_path / "qgis-config"
    profile = config / "profiles" / "default"
    plugins = profile / "python" / "plugins"
    plugins.mkdir(parents=True)
    with zipfile.ZipFile(plugin_zip) as archive:
        archive.extractall(plugins)
    ini = profile / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True)
    ini.write_text("[PythonPlugins]\nsegment_plugin=true\n")
    return config


def qgis_process(config: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run qgis_process.bin headless against a custom config folder."""
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", QGIS_CUSTOM_CONFIG_PATH=str(config))
    return subprocess.run(
        [QGIS_PROCESS, *args], capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, engine_python):
    """A user model folder holding the engine tests' tiny model, made by the engine itself.

    ``tiny_weighted`` is the same network with a card whose class weights all but rule out
    every class except building, unless they are kept (--keep-class-weights).
    """
    folder = tmp_path_factory.mktemp("user_models")
    script = (
        "import sys; sys.path.insert(0, 'tests/engine'); "
        "from conftest import BUILDING_ONLY_WEIGHTS, build_tiny_model, tiny_card; "
        "from segment_plugin.engine.models.package import save_package; "
        "save_package(build_tiny_model(), tiny_card(), sys.argv[1] + '/tiny'); "
        "card = tiny_card(name='tiny_weighted', class_weights=BUILDING_ONLY_WEIGHTS); "
        "save_package(build_tiny_model(), card, sys.argv[1] + '/tiny_weighted')"
    )
    subprocess.run(
        [str(engine_python), "-c", script, str(folder)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    previous = os.environ.get("SEGMENT_PLUGIN_MODELS")
    os.environ["SEGMENT_PLUGIN_MODELS"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("SEGMENT_PLUGIN_MODELS")
    else:
        os.environ["SEGMENT_PLUGIN_MODELS"] = previous


@pytest.fixture(scope="module")
def registry(qgis_app):
    """The Processing registry with this plugin's provider."""
    from segment_plugin.processing.provider import SegmentProvider

    provider = SegmentProvider()
    QgsApplication.processingRegistry().addProvider(provider)
    yield QgsApplication.processingRegistry()
    QgsApplication.processingRegistry().removeProvider(provider)


NAIP = ROOT.parent / "shared" / "data" / "rasters" / "chesapeake_m_3907833_nw_17_1_naip-new.tif"


@pytest.fixture
def labelled(qgis_new_project):
    """The NAIP raster and hand-made polygons (memory layer, as a user digitises them)."""
    if not NAIP.exists():
        pytest.skip("../shared/data is absent")
    raster = QgsRasterLayer(str(NAIP), "naip")
    layer = QgsVectorLayer(f"Polygon?crs={raster.crs().authid()}", "labels", "memory")
    layer.dataProvider().addAttributes([QgsField("kind", QVariant.String)])
    layer.updateFields()
    e = raster.extent()
    w, h = e.width() / 10, e.height() / 10
    features = []
    for i in range(10):
        for kind, row in (("forest", 1), ("field", 5)):
            f = QgsFeature(layer.fields())
            f.setGeometry(
                QgsGeometry.fromRect(
                    QgsRectangle(
                        e.xMinimum() + i * w,
                        e.yMaximum() - (row + 1) * h,
                        e.xMinimum() + (i + 0.8) * w,
                        e.yMaximum() - row * h,
                    )
                )
            )
            f.setAttributes([kind])
            features.append(f)
    layer.dataProvider().addFeatures(features)
    QgsProject.instance().addMapLayers([raster, layer])
    return raster, layer
