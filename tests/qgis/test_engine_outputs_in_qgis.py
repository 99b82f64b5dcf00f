"""Engine outputs opened by real QGIS: the class raster's style and the shapefile's features."""

from __future__ import annotations

import json

import numpy as np
import pytest
from osgeo import gdal, osr
from qgis.core import QgsVectorLayer

from segment_plugin.runner import run_engine

CLASSES = [
    {"code": 0, "name": "background", "color": "#F5F5DC"},
    {"code": 1, "name": "building", "color": "#D7191C"},
    {"code": 2, "name": "woodland", "color": "#1A9641"},
    {"code": 3, "name": "water", "color": "#2B83BA"},
    {"code": 4, "name": "road", "color": "#FDAE61"},
]


@pytest.fixture
def class_raster(tmp_path):
    """A 5-class raster with nodata, written with QGIS's own GDAL."""
    rng = np.random.default_rng(5)
    data = np.kron(rng.integers(0, 5, (9, 12)), np.ones((8, 8), int)).astype(np.uint8)
    data[:8, :16] = 255
    path = tmp_path / "classes.tif"
    ds = gdal.GetDriverByName("GTiff").Create(
        str(path), data.shape[1], data.shape[0], 1, gdal.GDT_Byte
    )
    ds.SetGeoTransform((150000.0, 0.5, 0.0, 420000.0, 0.0, -0.5))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(28992)
    ds.SetProjection(srs.ExportToWkt())
    band = ds.GetRasterBand(1)
    band.WriteArray(data)
    band.SetNoDataValue(255)
    ds.SetMetadataItem("CLASSES", json.dumps(CLASSES))
    ds = None
    return path, data


def test_qgis_reads_the_vectorized_shapefile_as_the_engine_wrote_it(
    tmp_path, class_raster, engine_python
):
    path, data = class_raster
    out = tmp_path / "polygons.shp"
    result = run_engine(["vectorize", str(path), "--output", str(out)], engine_python)
    assert result.ok, result.message
    layer = QgsVectorLayer(str(out), "polygons", "ogr")
    assert layer.isValid()
    assert layer.crs().authid() == "EPSG:28992"
    assert [f.name() for f in layer.fields()] == ["class_id", "class", "area_m2", "perim_m"]
    assert layer.featureCount() == result.data["features"]
    areas: dict[str, float] = {}
    for feature in layer.getFeatures():
        assert feature.geometry().isGeosValid()
        areas[feature["class"]] = areas.get(feature["class"], 0.0) + feature.geometry().area()
    for name, entry in result.data["classes"].items():
        expected = (data == entry["class_id"]).sum() * 0.25
        assert areas[name] == pytest.approx(expected, rel=1e-6)
        assert entry["area_m2"] == pytest.approx(expected, rel=1e-6)
