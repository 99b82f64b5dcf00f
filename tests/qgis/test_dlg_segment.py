"""The Segment Layer dialog in QGIS: preselection, model card, a real run, cancel."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT, SHOTS, fits_a_laptop, grab, wait_until
from qgis.core import QgsProject, QgsRasterLayer, QgsVectorLayer

import segment_plugin
from segment_plugin.runner import run_engine

DEMO = ROOT.parent / "shared" / "data" / "rasters" / "demo_nl_gorinchem_rgb_25cm.tif"
DEMO_STEM = "demo_nl_gorinchem_rgb_25cm"
CLASS_NAMES = ["background", "building", "woodland", "water", "road"]


@pytest.fixture
def project_layers(qgis_iface, qgis_new_project):
    if not DEMO.exists():
        pytest.skip("../shared/data is absent")
    raster = QgsRasterLayer(str(DEMO), "gorinchem")
    other = QgsRasterLayer(str(DEMO), "second raster")
    points = QgsVectorLayer("Point?crs=EPSG:28992", "points", "memory")
    QgsProject.instance().addMapLayers([points, other, raster])
    qgis_iface.setActiveLayer(raster)
    return raster, other, points


@pytest.fixture
def dialog(qgis_iface, project_layers, tiny_models, engine_python):
    plugin = segment_plugin.classFactory(qgis_iface)
    plugin.initGui()
    plugin.actions[0].trigger()
    dlg = plugin._segment_dialog
    wait_until(lambda: not dlg.status.text().startswith("looking"), timeout=120)
    yield dlg
    plugin.unload()


def render_map(layers, name, size=600):
    """Render layers as QGIS draws them (top first) to a PNG; check it shows class colours."""
    from qgis.core import QgsMapRendererParallelJob, QgsMapSettings
    from qgis.PyQt.QtCore import QSize
    from qgis.PyQt.QtGui import QColor

    settings = QgsMapSettings()
    settings.setLayers(layers)
    settings.setDestinationCrs(layers[-1].crs())
    settings.setExtent(layers[-1].extent())
    settings.setOutputSize(QSize(size, size))
    job = QgsMapRendererParallelJob(settings)
    job.start()
    job.waitForFinished()
    image = job.renderedImage()
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert image.save(str(SHOTS / name))
    palette = {QColor(c).name() for c in ("#F5F5DC", "#D7191C", "#1A9641", "#2B83BA", "#FDAE61")}
    seen = {QColor(image.pixel(x, y)).name() for x in range(0, size, 7) for y in range(0, size, 7)}
    assert seen & palette  # the classes are drawn in their colours


def test_opens_with_the_active_raster_and_only_rasters(dialog, project_layers, engine_python):
    raster, other, _ = project_layers
    assert dialog.layer_combo.currentLayer() == raster
    listed = {dialog.layer_combo.layer(i).name() for i in range(dialog.layer_combo.count())}
    assert listed == {"gorinchem", "second raster"}
    assert "tiny" in [dialog.model_combo.itemText(i) for i in range(dialog.model_combo.count())]
    dialog.model_combo.setCurrentText("tiny")
    assert "building" in dialog.card_view.toPlainText()
    assert "Known limitations: random weights: every scene" in dialog.card_view.toPlainText()
    # the bundled card measured on ../shared/data/landcover/dubai/tile_8: the dialog names the
    # data, not the trainer's relative path (the whole path is the tooltip)
    dialog.model_combo.setCurrentText("landcover")
    assert " on dubai/tile_8" in dialog.card_view.toPlainText()
    assert "../" not in dialog.card_view.toPlainText()
    assert dialog.card_view.toolTip().endswith("landcover/dubai/tile_8")
    dialog.model_combo.setCurrentText("tiny")
    # RGB file: the model's red/green/blue are prefilled from the colour interpretation
    assert [c.currentIndex() + 1 for c in dialog.band_combos] == [1, 2, 3]
    assert dialog.output_widget.filePath().endswith(f"{DEMO_STEM}_tiny.tif")
    wait_until(lambda: dialog.devices_known, timeout=120)  # the engine's device report
    gpu = run_engine(["info"], engine_python).data["gpu"]
    assert dialog.device_combo.itemText(0) == f"auto ({'GPU' if gpu else 'CPU'})"
    assert dialog.device_combo.itemText(2) == ("gpu" if gpu else "gpu (none found)")
    assert dialog.device_combo.model().item(2).isEnabled() == gpu
    grab(dialog, "segment_dialog.png")


def test_fits_a_laptop_screen_without_cut_text(dialog):
    dialog.extent_box.setCollapsed(False)  # the extent buttons showed "urrent Layer Ex"
    assert fits_a_laptop(dialog) == []
    for page in range(dialog.tabs.count()):
        dialog.tabs.setCurrentIndex(page)
        grab(dialog, f"segment_dialog_{dialog.tabs.tabText(page).lower()}.png")
    dialog.tabs.setCurrentIndex(0)


def test_outputs_default_beside_the_input_named_for_the_model(dialog, monkeypatch, tmp_path):
    from segment_plugin.gui import dlg_segment

    demo_folder = Path(dialog.layer_combo.currentLayer().source()).parent
    dialog.model_combo.setCurrentText("tiny")
    assert dialog.output_widget.filePath() == str(demo_folder / f"{DEMO_STEM}_tiny.tif")
    assert dialog.polygons_widget.filePath() == str(demo_folder / f"{DEMO_STEM}_tiny.shp")
    assert dialog.output_note.text() == ""
    dialog.model_combo.setCurrentText("landcover")  # the name follows the model ...
    assert dialog.output_widget.filePath().endswith(f"{DEMO_STEM}_landcover.tif")
    dialog.output_widget.setFilePath(str(tmp_path / "mine.tif"))
    dialog.model_combo.setCurrentText("tiny")  # ... until the user chooses a path
    assert dialog.output_widget.filePath() == str(tmp_path / "mine.tif")
    assert dialog.polygons_widget.filePath().endswith(f"{DEMO_STEM}_tiny.shp")

    monkeypatch.setattr(dlg_segment, "writable", lambda folder: folder != demo_folder)
    monkeypatch.setattr(dlg_segment.PluginSettings, "load", lambda: dlg_segment.PluginSettings())
    dialog._default_outputs()  # a read-only input folder: the documents folder, said so
    assert not dialog.polygons_widget.filePath().startswith(str(demo_folder))
    assert "not writable" in dialog.output_note.text()


def set_up_a_slow_run(dialog, tmp_path):
    """The tiny model on 32 px tiles: a run long enough to act on while it goes."""
    dialog.model_combo.setCurrentText("tiny")
    dialog.tile_spin.setValue(32)
    dialog.overlap_spin.setValue(8)
    dialog.output_widget.setFilePath(str(tmp_path / "classes.tif"))


def test_enter_runs_and_esc_asks_before_cancelling(dialog, tmp_path):
    from qgis.PyQt.QtCore import Qt
    from qgis.PyQt.QtTest import QTest

    set_up_a_slow_run(dialog, tmp_path)
    dialog.show()
    QTest.keyClick(dialog, Qt.Key_Return)
    assert dialog.task is not None  # Enter ran it
    wait_until(lambda: dialog.progress.value() > 0, timeout=120)
    asked = []
    dialog.confirm_cancel = lambda: asked.append("no") or False
    QTest.keyClick(dialog, Qt.Key_Escape)
    assert asked == ["no"] and dialog.isVisible() and dialog.task is not None
    dialog.confirm_cancel = lambda: asked.append("yes") or True
    QTest.keyClick(dialog, Qt.Key_Escape)
    assert asked == ["no", "yes"] and not dialog.isVisible()
    wait_until(lambda: dialog.task is None, timeout=60)
    assert dialog.last_error == "cancelled"
    assert list(tmp_path.iterdir()) == []


def test_run_adds_styled_layers(dialog, tmp_path, qgis_iface):
    dialog.model_combo.setCurrentText("tiny")
    dialog.tile_spin.setValue(256)
    dialog.output_widget.setFilePath(str(tmp_path / "classes.tif"))
    dialog.polygons_check.setChecked(True)
    dialog.polygons_widget.setFilePath(str(tmp_path / "classes.shp"))
    dialog.min_area_spin.setValue(2.0)
    dialog.run()
    wait_until(lambda: dialog.task is None, timeout=300)
    assert dialog.last_results is not None, dialog.status.text()
    classes = QgsProject.instance().mapLayersByName("gorinchem — classes (tiny)")[0]
    polygons = QgsProject.instance().mapLayersByName("gorinchem — class polygons (tiny)")[0]
    assert isinstance(classes, QgsRasterLayer) and isinstance(polygons, QgsVectorLayer)
    assert classes.renderer().type() == "paletted"
    assert [c.label for c in classes.renderer().classes()] == CLASS_NAMES
    assert polygons.renderer().type() == "categorizedSymbol"
    assert [c.label() for c in polygons.renderer().categories()] == CLASS_NAMES
    assert classes.crs() == polygons.crs() == dialog.layer_combo.currentLayer().crs()
    assert "ha" in dialog.status.text()
    table = dialog.results_table  # the Results tab: area per class, largest first
    assert dialog.tabs.currentWidget() is table and table.rowCount() >= 1
    shares = [float(table.item(row, 2).text()) for row in range(table.rowCount())]
    assert sum(shares) == pytest.approx(100, abs=0.5) and shares == sorted(shares, reverse=True)
    assert {table.item(row, 0).text() for row in range(table.rowCount())} <= set(CLASS_NAMES)
    grab(dialog, "segment_dialog_results.png", docs=True)
    from segment_plugin.settings import PluginSettings

    render_map([polygons, classes, dialog.layer_combo.currentLayer()], "segment_result_map.png")
    remembered = PluginSettings.load()
    assert (remembered.last_model, remembered.tile_size) == ("tiny", 256)
    assert remembered.output_folder == str(tmp_path)
    grab(dialog, "segment_dialog_done.png")


def test_cancel_mid_run_leaves_nothing(dialog, tmp_path):
    set_up_a_slow_run(dialog, tmp_path)
    dialog.run()
    wait_until(lambda: "left" in dialog.status.text(), timeout=120)  # an ETA is shown
    dialog.cancel()
    wait_until(lambda: dialog.task is None, timeout=60)
    assert dialog.last_error == "cancelled"
    assert list(tmp_path.iterdir()) == []


def test_engine_error_reaches_the_dialog_and_message_bar(dialog, tmp_path, qgis_iface):
    dialog.model_combo.setCurrentText("tiny")
    dialog.output_widget.setFilePath(str(tmp_path / "no" / "classes.tif"))  # folder missing
    dialog.run()
    wait_until(lambda: dialog.task is None, timeout=120)
    assert "the output folder" in dialog.last_error and "does not exist" in dialog.last_error
    assert "Traceback" not in dialog.status.text()


def test_export_polygons_round_trips(dialog, tmp_path):
    from segment_plugin.gui.export_shapefile import export_to_shapefile

    dialog.model_combo.setCurrentText("tiny")
    dialog.output_widget.setFilePath(str(tmp_path / "c.tif"))
    dialog.polygons_check.setChecked(True)
    dialog.polygons_widget.setFilePath(str(tmp_path / "c.gpkg"))
    dialog.run()
    wait_until(lambda: dialog.task is None, timeout=300)
    polygons = QgsProject.instance().mapLayersByName("gorinchem — class polygons (tiny)")[0]
    (tmp_path / "export").mkdir()
    written = export_to_shapefile(polygons, tmp_path / "export" / "polygons")
    assert written.suffix == ".shp"
    for ext in (".prj", ".cpg", ".dbf", ".shx"):
        assert written.with_suffix(ext).exists()
    back = QgsVectorLayer(str(written), "back", "ogr")
    assert back.featureCount() == polygons.featureCount()
    assert sorted(f["class"] for f in back.getFeatures()) == sorted(
        f["class"] for f in polygons.getFeatures()
    )
    assert back.crs() == polygons.crs()


def test_add_a_deepness_model_from_the_picker(dialog, tiny_models):
    """Add ONNX model…: the model list reloads with it chosen, its classes in the card view."""
    model = ROOT.parent / "shared/peers/deepness-test-models/dummy_segmentation_models"
    model = model / "two_outputs_softmax_bsx2x512x512.onnx"
    if not model.exists():
        pytest.skip("../shared is absent")
    try:
        dialog.onnx_buttons.add_model(model)
        name = model.stem
        wait_until(lambda: dialog.model_combo.currentText() == name, timeout=120)
        assert "Coffee" in dialog.card_view.toPlainText()
        assert "2 outputs" in dialog.card_view.toPlainText()
        assert dialog.onnx_buttons.add_button.isEnabled()
    finally:
        import shutil

        shutil.rmtree(tiny_models / model.stem, ignore_errors=True)


def test_export_of_the_stretching_bundled_model_carries_the_layers_stretch(dialog, tmp_path):
    """Export to ONNX… of `landcover` (it stretches each raster's contrast, which Deepness
    cannot): the chosen layer's stretch goes into the file; a tiny model exports as it is."""
    out = tmp_path / "landcover.onnx"
    dialog.model_combo.setCurrentText("landcover")
    assert dialog._stretch_raster("landcover") == DEMO
    assert dialog._stretch_raster("tiny") is None
    dialog.onnx_buttons.export_model("landcover", out)
    assert "contrast stretch of demo_nl_gorinchem_rgb_25cm.tif" in dialog.status.text()
    wait_until(lambda: dialog.onnx_buttons.task is None, timeout=300)
    assert dialog.status.text().startswith(f"wrote {out}"), dialog.status.text()
    assert out.stat().st_size > 10e6
