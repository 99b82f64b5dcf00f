"""segment_layer and vectorize through Processing on Dask; the scheduler in the engine dialog."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, wait_until
from osgeo import gdal, osr
from qgis.core import (
    QgsApplication,
    QgsProcessingContext,
    QgsProcessingFeedback,
    QgsProcessingParameterDefinition,
    QgsRasterLayer,
    QgsVectorLayer,
)

from segment_plugin.settings import PluginSettings


def test_segment_layer_on_a_local_dask_cluster(registry, tmp_path):
    """SCHEDULER 'local': the same algorithm, its strips on two Dask worker processes."""
    raster = ROOT.parent / "shared" / "data" / "rasters" / "demo_nl_gorinchem_rgb_25cm.tif"
    if not raster.exists():
        pytest.skip("../shared is absent")
    out = tmp_path / "classes.tif"
    algorithm = registry.algorithmById("segment_plugin:segment_layer")
    feedback = QgsProcessingFeedback()
    parameters = {"INPUT": str(raster), "OUTPUT": str(out), "SCHEDULER": "local", "WORKERS": 2}
    _, ok = algorithm.run(parameters, QgsProcessingContext(), feedback)
    assert ok, feedback.textLog()
    assert "strips on 2 workers" in feedback.textLog()
    assert QgsRasterLayer(str(out), "classes").isValid()


def test_dask_parameters_are_advanced_and_default_to_the_engine_setting(registry):
    settings = PluginSettings.load()
    previous = settings.dask_scheduler
    settings.dask_scheduler = "tcp://10.0.0.5:8786"
    settings.save()
    try:
        for name in ("segment_plugin:segment_layer", "segment_plugin:vectorize"):
            algorithm = registry.createAlgorithmById(name)
            for parameter in ("SCHEDULER", "WORKERS"):
                flags = algorithm.parameterDefinition(parameter).flags()
                assert flags & QgsProcessingParameterDefinition.FlagAdvanced, (name, parameter)
            default = algorithm.parameterDefinition("SCHEDULER").defaultValue()
            assert default == "tcp://10.0.0.5:8786", name
    finally:
        settings.dask_scheduler = previous
        settings.save()


def _class_raster(path: Path, seed: int) -> Path:
    """A 4096 × 800 class map (four ranges of rows on two workers), with QGIS's own GDAL."""
    rng = np.random.default_rng(seed)
    data = np.kron(rng.integers(0, 5, (100, 512)), np.ones((8, 8), int)).astype(np.uint8)
    data[:, 700:760] = 2  # one region through every range
    ds = gdal.GetDriverByName("GTiff").Create(str(path), 4096, 800, 1, gdal.GDT_Byte)
    ds.SetGeoTransform((150000.0, 0.5, 0.0, 420000.0, 0.0, -0.5))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(28992)
    ds.SetProjection(srs.ExportToWkt())
    ds.GetRasterBand(1).WriteArray(data)
    ds = None
    return path


def _rows(path: Path) -> list[tuple]:
    layer = QgsVectorLayer(str(path), "polygons", "ogr")
    assert layer.isValid()
    return sorted((f["class_id"], f["area_m2"], f["perim_m"]) for f in layer.getFeatures())


def test_vectorize_batch_of_layers_on_a_local_dask_cluster(registry, tmp_path):
    """What batch mode does (one run per row), each run's ranges of rows on two workers; the
    polygons are those of one engine process."""
    algorithm = registry.algorithmById("segment_plugin:vectorize")
    rasters = [_class_raster(tmp_path / f"classes{k}.tif", k) for k in range(2)]
    single = tmp_path / "single.gpkg"
    _, ok = algorithm.run({"INPUT": str(rasters[0]), "OUTPUT": str(single), "SCHEDULER": ""},
                          QgsProcessingContext(), QgsProcessingFeedback())  # fmt: skip
    assert ok
    for k, raster in enumerate(rasters):
        feedback = QgsProcessingFeedback()
        out = tmp_path / f"dask{k}.gpkg"
        parameters = {"INPUT": str(raster), "OUTPUT": str(out), "SCHEDULER": "local",
                      "WORKERS": 2}  # fmt: skip
        _, ok = algorithm.run(parameters, QgsProcessingContext(), feedback)
        assert ok, feedback.textLog()
        assert "4 ranges of rows on 2 workers" in feedback.textLog()
        assert len(_rows(out)) > 100
    dask, one = _rows(tmp_path / "dask0.gpkg"), _rows(single)
    assert len(dask) == len(one)  # first: pytest's diff of two long lists takes many minutes
    assert dask == one


def _address(info: Path) -> str | None:
    """The scheduler's address once its file is written whole (it appears empty first)."""
    try:
        return json.loads(info.read_text())["address"]
    except (OSError, ValueError, KeyError):
        return None


def test_engine_dialog_shows_the_dask_scheduler(qgis_app, engine_python, tmp_path):
    """The scheduler setting is checked with the engine: workers when it answers, the reason
    in red when it does not."""
    from segment_plugin.gui.dlg_engine import EngineDialog

    dask = Path(engine_python).parent / "dask"
    info = tmp_path / "scheduler.json"
    procs = [subprocess.Popen([str(dask), "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(info)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]  # fmt: skip
    settings = PluginSettings.load()
    previous = settings.dask_scheduler
    try:
        wait_until(lambda: _address(info), timeout=60)
        address = _address(info)
        worker = [str(dask), "worker", address, "--nthreads", "1", "--no-dashboard"]
        procs.append(subprocess.Popen(worker, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        cases = [(address, "connected: 1 workers", "connected"),
                 ("tcp://127.0.0.1:9", "cannot reach the Dask scheduler", "refused")]  # fmt: skip
        for scheduler, expected, shot in cases:
            dialog = EngineDialog()
            dialog.scheduler_edit.setText(scheduler)
            time.sleep(3)  # the worker joins
            dialog._save_and_check()
            wait_until(lambda d=dialog: d.last_result is not None, timeout=120)
            assert expected in dialog.status_view.toPlainText(), dialog.status_view.toPlainText()
            assert PluginSettings.load().dask_scheduler == scheduler
            shots = ROOT / "build" / "screenshots"
            shots.mkdir(parents=True, exist_ok=True)
            dialog.show()
            QgsApplication.processEvents()
            assert dialog.grab().save(str(shots / f"engine_dialog_dask_{shot}.png"))
            dialog.close()
    finally:
        settings.dask_scheduler = previous
        settings.save()
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(30)
