"""Run inside the real QGIS desktop (``qgis --code``): trigger Segment Layer, report, quit.

Started by test_installed_plugin.py under xvfb-run and timeout. Writes a JSON report and a PNG of
the dialog to the folder named by SMOKE_OUT, then quits QGIS itself.
"""

import json
import os
import time
from pathlib import Path

from qgis.core import QgsApplication, QgsProject
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtWidgets import QAction, QApplication, QDialog, QToolBar
from qgis.utils import iface, plugins

OUT = Path(os.environ["SMOKE_OUT"])


def raster_menu_actions():
    found = []
    for action in iface.rasterMenu().actions():
        if action.menu() is not None:
            found.extend(action.menu().actions())
    return found


def wait(condition, seconds):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        QgsApplication.processEvents()
        time.sleep(0.05)


def segment_and_grab(dialog, raster, name, bands, report):
    """Segment Layer with the bundled model, as a user clicks it; grab the QGIS window.

    ``bands``: the layer band (1-based) for each of the model's bands, as a user picks them.
    """
    project = QgsProject.instance()
    project.removeAllMapLayers()
    layer = iface.addRasterLayer(raster, name)
    project.setCrs(layer.crs())
    renderer = layer.renderer()
    if hasattr(renderer, "setRedBand"):  # show the imagery in the colours the model reads
        renderer.setRedBand(bands[0])
        renderer.setGreenBand(bands[1])
        renderer.setBlueBand(bands[2])
    dialog.layer_combo.setLayer(layer)
    dialog.model_combo.setCurrentText("landcover")
    for combo, band in zip(dialog.band_combos, bands):
        combo.setCurrentIndex(band - 1)
    dialog.output_widget.setFilePath(str(OUT / f"{name}_landcover.tif"))
    dialog.polygons_check.setChecked(True)
    dialog.polygons_widget.setFilePath(str(OUT / f"{name}_landcover.gpkg"))
    dialog.min_area_spin.setValue(10.0)
    dialog.run()
    wait(lambda: dialog.task is None, 200)
    entry = report.setdefault("segmented", {})[name] = {"status": dialog.status.text()}
    entry["layers"] = sorted(layer.name() for layer in project.mapLayers().values())
    classes = project.mapLayersByName(f"{name} — classes (landcover)")
    polygons = project.mapLayersByName(f"{name} — class polygons (landcover)")
    if not classes or not polygons:
        return
    classes[0].renderer().setOpacity(0.55)
    polygons[0].setOpacity(0.35)
    entry["legend"] = [c.label for c in classes[0].renderer().classes()]
    iface.mainWindow().resize(1600, 1000)  # no window manager on Xvfb to maximise it
    canvas = iface.mapCanvas()
    canvas.setExtent(layer.extent())
    canvas.refreshAllLayers()
    QgsApplication.processEvents()
    canvas.waitWhileRendering()
    wait(lambda: False, 2)  # let the legend and the status bar settle
    iface.mainWindow().grab().save(str(OUT / f"qgis_{name}.png"))


def run():
    report = {"loaded": "segment_plugin" in plugins}
    actions = {a.objectName(): a for a in iface.mainWindow().findChildren(QAction)}
    segment = actions.get("segment_plugin_segment_layer")
    toolbars = {t.objectName(): t for t in iface.mainWindow().findChildren(QToolBar)}
    toolbar = toolbars.get("segment_plugin_toolbar")
    report["action"] = segment is not None
    report["in_raster_menu"] = segment in raster_menu_actions()
    report["in_toolbar"] = toolbar is not None and segment in toolbar.actions()
    if segment is not None:
        segment.trigger()
    dialogs = [
        w for w in QApplication.topLevelWidgets() if isinstance(w, QDialog) and w.isVisible()
    ]
    report["dialogs"] = [d.windowTitle() for d in dialogs]
    if dialogs:
        dialog = dialogs[0]
        deadline = time.monotonic() + 150
        # wait for the dialog's engine tasks: QGIS asks (modally) before quitting with tasks running
        busy = lambda: dialog._models_task is not None or dialog._devices_task is not None  # noqa: E731
        while busy() and time.monotonic() < deadline:
            QgsApplication.processEvents()
            time.sleep(0.05)
        QgsApplication.processEvents()
        report["status"] = dialog.status.text()
        dialog.grab().save(str(OUT / "segment_dialog.png"))
        for entry in filter(None, os.environ.get("SMOKE_RASTERS", "").split(";")):
            name, raster, bands = entry.split("|")  # what a user picks in the dialog
            segment_and_grab(dialog, raster, name, [int(b) for b in bands.split(",")], report)
        dialog.close()
    finetune = actions.get("segment_plugin_fine_tune")
    report["finetune_in_toolbar"] = toolbar is not None and finetune in toolbar.actions()
    if finetune is not None:
        finetune.trigger()
        shown = [
            w
            for w in QApplication.topLevelWidgets()
            if isinstance(w, QDialog) and w.isVisible() and w.windowTitle() == "Fine-tune model"
        ]
        if shown:
            deadline = time.monotonic() + 150
            busy = lambda: shown[0]._models_task or shown[0]._devices_task  # noqa: E731
            while busy() and time.monotonic() < deadline:
                QgsApplication.processEvents()
                time.sleep(0.05)
            QgsApplication.processEvents()
            report["finetune_status"] = shown[0].status.text()
            shown[0].grab().save(str(OUT / "finetune_dialog.png"))
            shown[0].close()
    (OUT / "report.json").write_text(json.dumps(report))
    QgsProject.instance().clear()  # else QGIS asks (modally) whether to save the project
    QTimer.singleShot(200, iface.actionExit().trigger)


QTimer.singleShot(1000, run)
