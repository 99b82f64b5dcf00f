"""segment_layer through Processing with its strips on Dask."""

from __future__ import annotations

import pytest
from conftest import ROOT
from qgis.core import QgsProcessingContext, QgsProcessingFeedback, QgsRasterLayer


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
