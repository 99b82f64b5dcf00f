"""export_training_chips and fine_tune through Processing, on a real NAIP raster."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT
from qgis.core import (
    QgsFeature,
    QgsField,
    QgsGeometry,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeatureSourceDefinition,
    QgsProcessingFeedback,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)
from qgis.PyQt.QtCore import QVariant

from segment_plugin.runner import run_engine

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


class Feedback(QgsProcessingFeedback):
    """Keeps the error, so a failed run says why."""

    def __init__(self):
        super().__init__()
        self.errors = []

    def reportError(self, error, fatalError=False):  # noqa: N802, N803
        self.errors.append(error)


def run(registry, name, parameters):
    feedback = Feedback()
    results, ok = registry.algorithmById(f"segment_plugin:{name}").run(
        parameters, QgsProcessingContext(), feedback
    )
    assert ok, feedback.errors
    return results, ok


def test_export_training_chips(registry, labelled, tmp_path, engine_python):
    raster, layer = labelled
    results, ok = run(
        registry,
        "export_training_chips",
        {
            "INPUT": raster,
            "LABELS": layer,
            "FIELD": "kind",
            "MAPPING": json.dumps({"forest": 2, "field": 0}),
            "PATCH": 0,
            "OUTPUT": str(tmp_path / "chips"),
        },
    )
    assert ok
    masks = sorted((tmp_path / "chips").glob("*_mask.tif"))
    assert masks and len(masks) == len(list((tmp_path / "chips").glob("chip_*.tif"))) // 2
    mask = QgsRasterLayer(str(masks[0]), "m")
    assert mask.crs() == raster.crs()


def test_fine_tune_adds_a_user_model_with_before_and_after(
    registry, labelled, tiny_models, engine_python
):
    raster, layer = labelled
    results, ok = run(
        registry,
        "fine_tune",
        {
            "INPUT": raster,
            "LABELS": layer,
            "FIELD": "kind",
            "MAPPING": json.dumps({"forest": 2, "field": 0}),
            "BASE_MODEL": "tiny",
            "NAME": "tiny-naip",
            "EPOCHS": 1,
            "PATCH": 0,
            "LEARNING_RATE": 0.001,
            "FREEZE_ENCODER": False,
        },
    )
    assert ok
    assert results["MIOU_BEFORE"] is not None and results["MIOU_AFTER"] is not None
    listed = run_engine(["models"], engine_python).data["models"]
    assert "tiny-naip" in [m["card"]["name"] for m in listed if "card" in m]
    with pytest.raises(QgsProcessingException, match="exists; pass --overwrite"):
        algorithm = registry.algorithmById("segment_plugin:fine_tune")
        algorithm.processAlgorithm(
            {
                "INPUT": raster,
                "LABELS": layer,
                "FIELD": "kind",
                "MAPPING": json.dumps({"forest": 2, "field": 0}),
                "BASE_MODEL": "tiny",
                "NAME": "tiny-naip",
                "EPOCHS": 1,
                "PATCH": 0,
                "FREEZE_ENCODER": False,
            },
            QgsProcessingContext(),
            QgsProcessingFeedback(),
        )


def test_empty_selection_is_refused_before_the_run(registry, labelled, tiny_models):
    raster, layer = labelled
    layer.removeSelection()
    selected_only = QgsProcessingFeatureSourceDefinition(layer.id(), True)
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    results, ok = registry.algorithmById("segment_plugin:fine_tune").run(
        {
            "INPUT": raster,
            "LABELS": selected_only,
            "FIELD": "kind",
            "BASE_MODEL": "tiny",
            "NAME": "never",
        },
        context,
        QgsProcessingFeedback(),
    )
    assert not ok
