"""export_training_chips and fine_tune through Processing, on a real NAIP raster."""

from __future__ import annotations

import json

import pytest
from conftest import NAIP
from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeatureSourceDefinition,
    QgsProcessingFeedback,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
)

from segment_plugin.runner import run_engine

CLASS_RASTER = NAIP.with_name("chesapeake_m_3907833_nw_17_1_lc_classes.tif")


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
            # partial labels: fields are some class other than woodland
            "MAPPING": json.dumps({"forest": 2, "field": "other"}),
            "BASE_MODEL": "tiny",
            "NAME": "tiny-naip",
            "EPOCHS": 1,
            "PATCH": 0,
            "LEARNING_RATE": 0.001,
            "FREEZE_ENCODER": False,
            "TRAIN_BATCHNORM": True,  # advanced: passed on to the engine
            "DISTILL": 0.5,  # advanced: passed on to the engine
        },
    )
    assert ok
    assert results["MIOU_BEFORE"] is not None and results["MIOU_AFTER"] is not None
    listed = run_engine(["models"], engine_python).data["models"]
    cards = {m["card"]["name"]: m["card"] for m in listed if "card" in m}
    assert cards["tiny-naip"]["training"]["train_batchnorm"] is True
    assert cards["tiny-naip"]["training"]["distill"] == 0.5
    algorithm = registry.algorithmById("segment_plugin:fine_tune")
    for taken in ("tiny-naip", "landcover"):  # a user model, the bundled model
        with pytest.raises(QgsProcessingException, match=f"a model named '{taken}' exists"):
            algorithm.processAlgorithm(
                {
                    "INPUT": raster,
                    "LABELS": layer,
                    "FIELD": "kind",
                    "MAPPING": json.dumps({"forest": 2, "field": 0}),
                    "BASE_MODEL": "tiny",
                    "NAME": taken,
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


def test_fine_tune_on_a_class_raster_with_a_new_class_and_an_area_of_interest(
    registry, labelled, tiny_models, engine_python
):
    """Labels from a class raster layer; its value 4 (road) becomes a new class 'track'."""
    raster, _ = labelled
    classes = QgsRasterLayer(str(CLASS_RASTER), "land cover")
    e = raster.extent()
    aoi = QgsRectangle(e.xMinimum(), e.yMinimum(), e.center().x() + e.width() / 4, e.yMaximum())
    new_classes = [
        {"code": 0, "name": "background", "color": "#F5F5DC"},
        {"code": 2, "name": "woodland", "color": "#1A9641"},
        {"code": 3, "name": "water", "color": "#2B83BA"},
        {"code": 5, "name": "track", "color": "#FF00FF"},
    ]
    results, ok = run(
        registry,
        "fine_tune",
        {
            "INPUT": raster,
            "LABEL_RASTER": classes,
            "MAPPING": json.dumps({"0": 0, "2": 2, "3": 3, "4": 5, "255": 255}),
            "CLASSES": json.dumps(new_classes),
            "EXTENT": aoi,
            "BASE_MODEL": "tiny",
            "NAME": "tiny-track",
            "EPOCHS": 1,
            "PATCH": 0,
            "FREEZE_ENCODER": False,
            "DEVICE": 1,
        },
    )
    assert ok and results["MIOU_AFTER"] is not None
    assert results["MIOU_BEFORE"] is None  # new classes: the base model cannot be compared
    listed = run_engine(["models"], engine_python).data["models"]
    card = next(m["card"] for m in listed if m.get("card", {}).get("name") == "tiny-track")
    assert [c["name"] for c in card["classes"]] == ["background", "woodland", "water", "track"]
    report = json.loads(results["REPORT"])
    assert report["params"]["device"] == "cpu"


def test_labels_must_be_polygons_or_a_class_raster(registry, labelled, tiny_models):
    raster, layer = labelled
    context = QgsProcessingContext()
    context.setProject(QgsProject.instance())
    feedback = Feedback()
    _, ok = registry.algorithmById("segment_plugin:export_training_chips").run(
        {"INPUT": raster, "OUTPUT": "TEMPORARY_OUTPUT"}, context, feedback
    )
    assert not ok and "give label polygons (LABELS) or a class raster" in " ".join(feedback.errors)
