"""The Fine-tune model dialog in QGIS: mapping, checks before the run, a real run, cancel."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from conftest import NAIP, fits_a_laptop, grab, wait_until
from qgis.core import (
    QgsFeature,
    QgsGeometry,
    QgsProject,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)

import segment_plugin
from segment_plugin.runner import run_engine

CLASS_RASTER = NAIP.with_name("chesapeake_m_3907833_nw_17_1_lc_classes.tif")


@pytest.fixture
def plugin(qgis_iface, labelled, tiny_models, engine_python):
    raster, _ = labelled
    qgis_iface.setActiveLayer(raster)
    instance = segment_plugin.classFactory(qgis_iface)
    instance.initGui()
    yield instance
    instance.unload()


@pytest.fixture
def dialog(plugin, labelled):
    """The dialog as the toolbar opens it, ready for the tiny model on the NAIP labels."""
    next(a for a in plugin.actions if a.objectName() == "segment_plugin_fine_tune").trigger()
    dlg = plugin._finetune_dialog
    wait_until(lambda: not dlg.status.text().startswith("looking"), timeout=120)
    wait_until(lambda: dlg._devices_task is None, timeout=120)
    dlg.model_combo.setCurrentText("tiny")
    dlg.polygon_combo.setLayer(labelled[1])
    dlg.field_combo.setField("kind")
    assert not dlg.freeze_check.isChecked()  # trained by default (the tiny model has no encoder)
    dlg.patch_combo.setCurrentIndex(0)
    dlg.lr_spin.setValue(0.001)
    return dlg


def test_fits_a_laptop_screen_without_cut_text(dialog):
    assert fits_a_laptop(dialog) == []
    grab(dialog, "finetune_dialog_laptop.png")


def test_mapping_table_and_checks_before_the_run(dialog, labelled):
    raster, layer = labelled
    assert dialog.raster_combo.currentLayer() == raster
    assert dialog.devices_known and dialog.device_combo.itemText(0) in ("auto (CPU)", "auto (GPU)")
    assert dialog.name_edit.text() == "tiny_naip"
    assert "known limitations: random weights: every scene" in dialog.card_label.toolTip()
    values = [dialog.mapping_table.item(r, 0).text() for r in range(2)]
    assert values == ["field", "forest"]
    assert dialog.mapping() == {}  # text values: the user chooses the classes
    dialog.train()
    assert dialog.task is None
    assert dialog.last_error == "Choose a class (or ignore) for the label values: field, forest."
    dialog.set_mapping("forest", 2)
    dialog.set_mapping("field", 255)
    assert dialog.mapping() == {"forest": 2, "field": 255}
    # partial labels: "field" is some class other than woodland, not known to be background
    dialog.set_mapping("field", "other")
    assert dialog.mapping() == {"forest": 2, "field": "other"}
    assert json.loads(dialog.parameters()["MAPPING"]) == {"forest": 2, "field": "other"}
    dialog.set_mapping("forest", "other")
    assert "map at least one to a class" in dialog.problem()
    dialog.set_mapping("forest", 2)
    dialog.set_mapping("field", 0)

    dialog.name_edit.setText("tiny")
    assert dialog.problem() == "A model named 'tiny' exists: choose another name."
    dialog.name_edit.setText("bad name!")
    assert "Give the new model a name" in dialog.problem()
    dialog.name_edit.setText("ok_name")

    dialog.selected_check.setChecked(True)
    layer.removeSelection()
    assert "no label polygon is selected" in dialog.problem()
    dialog.selected_check.setChecked(False)

    far = QgsVectorLayer(f"Polygon?crs={raster.crs().authid()}&field=kind:string", "far", "memory")
    feature = QgsFeature(far.fields())
    feature.setGeometry(QgsGeometry.fromRect(QgsRectangle(0, 0, 100, 100)))
    feature.setAttributes(["forest"])
    far.dataProvider().addFeatures([feature])
    QgsProject.instance().addMapLayer(far)
    dialog.polygon_combo.setLayer(far)
    dialog.field_combo.setField("kind")
    assert dialog.problem() == f"The labels in far do not overlap {raster.name()}."
    dialog.polygon_combo.setLayer(layer)
    dialog.field_combo.setField("kind")

    # a class raster: its values are listed, codes of the model's classes are mapped already
    dialog.raster_radio.setChecked(True)
    classes = QgsRasterLayer(str(CLASS_RASTER), "land cover")
    QgsProject.instance().addMapLayer(classes)
    dialog.label_raster_combo.setLayer(classes)
    assert dialog.mapping() == {"0": 0, "2": 2, "3": 3, "4": 4, "255": 255}
    code = dialog.add_class("track", "#ff00ff")
    assert code == 5 and dialog.classes()[-1] == {"code": 5, "name": "track", "color": "#ff00ff"}
    dialog.set_mapping("4", 5)
    params = dialog.parameters()
    assert json.loads(params["MAPPING"])["4"] == 5 and params["LABEL_RASTER"] == classes
    assert [c["name"] for c in json.loads(params["CLASSES"])][-1] == "track"
    assert dialog.problem() is None
    grab(dialog, "finetune_dialog.png")


def test_fine_tune_from_the_dialog_end_to_end(dialog, plugin, engine_python, tmp_path):
    plugin.show_segment_dialog()  # open: the new model must show up in its list at once
    segment = plugin._segment_dialog
    wait_until(lambda: not segment.status.text().startswith("looking"), timeout=120)
    dialog.set_mapping("forest", 2)
    dialog.set_mapping("field", 0)
    dialog.name_edit.setText("tiny_dialog")
    dialog.epochs_spin.setValue(3)
    dialog.train()
    assert dialog.task is not None, dialog.status.text()
    wait_until(lambda: dialog.task is None, timeout=300)
    assert dialog.last_results is not None, dialog.status.text()
    # live chart and table were fed by the engine's per-epoch metrics
    assert [e["epoch"] for e in dialog.chart.epochs] == [1, 2, 3]
    assert dialog.chart.base_miou == pytest.approx(dialog.last_results["MIOU_BEFORE"])
    report = json.loads(dialog.last_results["REPORT"])
    headers = [dialog.iou_table.horizontalHeaderItem(c).text() for c in range(4)]
    after = "After (base handed back)" if report["handed_back"] else "After"
    assert headers == ["Class", "Before", after, "Change"]
    # what the engine trained with is shown: the class weights and the validation area
    info = dialog.run_info.text()
    assert info.startswith("Class weights used: background ")
    assert "Validated on: " in info and "(validation area: columns " in info
    woodland = next(
        r
        for r in range(dialog.iou_table.rowCount())
        if dialog.iou_table.item(r, 0).text() == "woodland"
    )
    assert dialog.iou_table.item(woodland, 3).text().startswith(("+", "-"))
    assert "(base) →" in dialog.status.text()
    grab(dialog, "finetune_dialog_done.png", docs=True)
    grab(dialog.chart, "finetune_chart.png")
    # the new model is listed in the Segment dialog, and it segments
    wait_until(lambda: "tiny_dialog" in segment.models, timeout=120)
    out = tmp_path / "classes.tif"
    result = run_engine(
        ["segment", str(NAIP), "--model", "tiny_dialog", "--output", str(out)], engine_python
    )
    assert result.ok, result.message
    assert out.exists()


def test_cancel_keeps_the_best_epoch_and_stops_the_engine(dialog):
    dialog.set_mapping("forest", 2)
    dialog.set_mapping("field", 0)
    dialog.name_edit.setText("tiny_cancelled")
    dialog.epochs_spin.setValue(200)
    dialog.train()
    wait_until(lambda: len(dialog.chart.epochs) >= 1, timeout=300)  # an epoch was saved
    dialog.cancel()
    wait_until(lambda: dialog.task is None, timeout=60)
    assert dialog.last_error == "cancelled; the best epoch so far is kept as model 'tiny_cancelled'"
    kept = json.loads((Path(dialog.user_dir) / "tiny_cancelled" / "model.json").read_text())
    assert kept["name"] == "tiny_cancelled"
    engines = subprocess.run(
        ["pgrep", "-f", "tiny_cancelled"], capture_output=True, text=True, check=False
    )
    assert engines.stdout.strip() == ""  # the engine process is gone


def test_models_folder_that_cannot_be_written_is_one_clear_message(dialog, tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SEGMENT_PLUGIN_MODELS", str(blocker / "models"))
    dialog.load_models()
    wait_until(lambda: dialog.user_dir == str(blocker / "models"), timeout=120)
    dialog.model_combo.setCurrentText("landcover")
    dialog.set_mapping("forest", 2)
    dialog.set_mapping("field", 0)
    dialog.name_edit.setText("unwritable")
    dialog.train()
    wait_until(lambda: dialog.task is None, timeout=120)
    assert dialog.last_error.startswith("cannot create the models folder")
    assert "Traceback" not in dialog.status.text()


def test_an_inference_only_engine_offers_the_full_one(plugin, monkeypatch, tmp_path):
    """No TensorFlow in the engine: Train is off, the dialog says why and offers the setup."""
    from segment_plugin.runner import ENV_PYTHON

    engine = Path(segment_plugin.__file__).parents[1] / ".venv" / "bin" / "python"
    blocker = Path(segment_plugin.__file__).parents[1] / "tests" / "engine" / "no_tensorflow"
    light = tmp_path / "light-python"  # the full engine with TensorFlow and Keras made absent
    light.write_text(f'#!/bin/sh\nPYTHONPATH="{blocker}" exec "{engine}" "$@"\n')
    light.chmod(0o755)
    monkeypatch.setenv(ENV_PYTHON, str(light))
    next(a for a in plugin.actions if a.objectName() == "segment_plugin_fine_tune").trigger()
    dlg = plugin._finetune_dialog
    wait_until(lambda: dlg.full_engine_button.isVisible(), timeout=120)
    assert not dlg.train_button.isEnabled()
    assert "needs the full engine" in dlg.run_info.text()
    assert fits_a_laptop(dlg) == []
    grab(dlg, "finetune_dialog_inference_only.png")
    setup = dlg.set_up_full_engine()
    try:
        assert setup.kind_combo.currentData() == "full"
    finally:
        setup.close()
