"""The Segment Layer dialog: parameters in, the segment_layer algorithm run as a QGIS task.

The dialog only collects parameters and shows results: the work is the Processing algorithm
``segment_plugin:segment_layer`` run by a QgsProcessingAlgRunnerTask (one execution path for the
dialog, the toolbox and qgis_process). The model list comes from the engine (``models``) in a
background task, so opening the dialog never blocks QGIS.
"""

from __future__ import annotations

import html
import json
import os
import re
import time
from pathlib import Path

from qgis.core import (
    Qgis,
    QgsMapLayerProxyModel,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.gui import QgsExtentGroupBox, QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import QStandardPaths, Qt, pyqtSlot
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHeaderView,
    QLabel,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from segment_plugin.area_summary import area_summary
from segment_plugin.gui.algorithm_dialog import AlgorithmDialog
from segment_plugin.gui.onnx_models import OnnxModelButtons
from segment_plugin.gui.styling import (
    raster_classes,
    result_layer_names,
    style_class_polygons,
)
from segment_plugin.processing.alg_segment_layer import DEVICES
from segment_plugin.processing.raster_input import is_plain_file
from segment_plugin.settings import PluginSettings


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def measured_on(on: str) -> str:
    """A card's ``metrics.on`` as a user reads it: the last two parts of a data path.

    Cards record the validation data as the trainer saw it ("../shared/data/landcover/dubai/
    tile_8", or "12 held-out images" for a split); the folder and its parent say which data.
    """
    parts = Path(on).parts
    return "/".join(parts[-2:]) if len(parts) > 2 else on


def writable(folder: Path) -> bool:
    """Whether results can be written into ``folder``."""
    return folder.is_dir() and os.access(folder, os.W_OK)


def output_folder(source: Path | None) -> tuple[Path, str]:
    """Where results go by default, and a note for the dialog when not beside the input.

    Beside the input raster; else the folder used last; else the user's documents folder.
    """
    if source is not None and writable(source.parent):
        return source.parent, ""
    why = "the input's folder is not writable" if source else "the layer is not a file"
    remembered = PluginSettings.load().output_folder
    if remembered and writable(Path(remembered)):
        return Path(remembered), f"Results go to the folder used last ({why})."
    documents = QStandardPaths.writableLocation(QStandardPaths.DocumentsLocation)
    folder = Path(documents) if documents and writable(Path(documents)) else Path.home()
    return folder, f"Results go to {folder} ({why})."


class SegmentDialog(AlgorithmDialog):
    """Segment a raster layer: model, bands, extent, tiling, outputs → layers in the project."""

    RUN_NAME = "Segmentation"

    def __init__(self, iface, parent=None) -> None:
        super().__init__(iface, parent)
        self.setWindowTitle("Segment Layer")
        self.setMinimumWidth(560)
        self.resize(960, 0)  # wide enough for the extent buttons' labels
        self._started = 0.0
        self._added_model: str | None = None  # an ONNX model just added: chosen once listed
        self._source_name = ""
        self._defaults: dict[str, str] = {}  # suffix → the output path the dialog proposed
        self._build()
        self._load_settings()
        self.layer_combo.layerChanged.connect(self._layer_changed)
        self.model_combo.currentIndexChanged.connect(self._model_changed)
        self._layer_changed(self.layer_combo.currentLayer())
        self.load_models()

    # ---- construction -------------------------------------------------------------------
    def _build(self) -> None:
        """Input / Options / Outputs tabs: the dialog fits a 1366×768 laptop screen."""
        layout = QVBoxLayout(self)
        self.tabs = QTabWidget()
        layout.addWidget(self.tabs)
        input_tab = QWidget()
        input_layout = QVBoxLayout(input_tab)
        form = QFormLayout()
        self.layer_combo = QgsMapLayerComboBox()
        self.layer_combo.setFilters(QgsMapLayerProxyModel.RasterLayer)
        active = self.iface.activeLayer()
        if isinstance(active, QgsRasterLayer):
            self.layer_combo.setLayer(active)
        form.addRow("Raster layer:", self.layer_combo)
        self.export_note = QLabel()
        self.export_note.setWordWrap(True)
        form.addRow("", self.export_note)
        self.model_combo = QComboBox()
        form.addRow("Model:", self.model_combo)
        self.onnx_buttons = OnnxModelButtons(
            self.model_combo.currentText,
            self._model_added,
            lambda text: self.status.setText(text),
            self._stretch_raster,
        )
        form.addRow("", self.onnx_buttons)
        input_layout.addLayout(form)

        self.card_view = QTextBrowser()  # scrolls: the card's prose can be long
        self.card_view.setMinimumHeight(100)
        self.card_view.setMaximumHeight(130)
        input_layout.addWidget(self.card_view)

        self.bands_box = QGroupBox("Band mapping (model band ← layer band)")
        self.bands_form = QFormLayout(self.bands_box)
        self.band_combos: list[QComboBox] = []
        input_layout.addWidget(self.bands_box)
        input_layout.addStretch()
        self.tabs.addTab(input_tab, "Input")

        options_tab = QWidget()
        options_layout = QVBoxLayout(options_tab)

        self.extent_box = QgsExtentGroupBox()
        self.extent_box.setTitle("Extent (default: whole layer)")
        self.extent_box.setCheckable(True)
        self.extent_box.setChecked(False)
        if self.iface.mapCanvas() is not None:
            self.extent_box.setMapCanvas(self.iface.mapCanvas())
        options_layout.addWidget(self.extent_box)

        run_box = QGroupBox("Processing")
        run_form = QFormLayout(run_box)
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(0, 4096)
        self.tile_spin.setSingleStep(32)
        self.tile_spin.setSpecialValueText("model default")
        self.tile_spin.setToolTip(
            "Pixels per side of each piece the model sees. A smaller tile uses less memory but "
            "gives each pixel less context, which changes a few percent of the map."
        )
        self.overlap_spin = QSpinBox()
        self.overlap_spin.setRange(0, 2048)
        self.overlap_spin.setSpecialValueText("3/8 of the tile")
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICES)
        self.tta_check = QCheckBox("test-time augmentation (4× slower)")
        self.tta_check.setToolTip("Average the four flips of each tile: a little more accurate.")
        self.keep_weights_check = QCheckBox("keep the training's class weights")
        self.keep_weights_check.setToolTip(
            "The model's loss weighted classes by their rarity in its training data, which biases "
            "its outputs towards rare classes; by default that bias is undone (more accurate on "
            "scenes like the training data). Keep it for scenes whose classes are mixed "
            "differently: on the Dutch demo the bundled model then finds 3× the road and 1.3× "
            "the woodland, but also more building than there is; on its held-out test images it "
            "scores lower (mean IoU 0.62 against 0.65)."
        )
        run_form.addRow("Tile size:", self.tile_spin)
        run_form.addRow("Overlap:", self.overlap_spin)
        run_form.addRow("Device:", self.device_combo)
        run_form.addRow("", self.tta_check)
        run_form.addRow("", self.keep_weights_check)
        options_layout.addWidget(run_box)
        options_layout.addStretch()
        self.tabs.addTab(options_tab, "Options")

        out_box = QWidget()
        out_form = QFormLayout(out_box)
        self.output_widget = QgsFileWidget()
        self.output_widget.setStorageMode(QgsFileWidget.SaveFile)
        self.output_widget.setFilter("GeoTIFF (*.tif)")
        out_form.addRow("Class raster:", self.output_widget)
        self.output_note = QLabel()  # where results go when not beside the input
        self.output_note.setWordWrap(True)
        out_form.addRow("", self.output_note)
        self.polygons_check = QCheckBox("also write class polygons")
        self.polygons_widget = QgsFileWidget()
        self.polygons_widget.setStorageMode(QgsFileWidget.SaveFile)
        self.polygons_widget.setFilter("Shapefile (*.shp);;GeoPackage (*.gpkg)")
        self.min_area_spin = QDoubleSpinBox()
        self.min_area_spin.setRange(0, 1e7)
        self.min_area_spin.setSuffix(" m²")
        self.simplify_spin = QDoubleSpinBox()
        self.simplify_spin.setRange(0, 1000)
        self.simplify_spin.setSuffix(" m")
        out_form.addRow("", self.polygons_check)
        out_form.addRow("Polygons:", self.polygons_widget)
        out_form.addRow("Minimum area:", self.min_area_spin)
        out_form.addRow("Simplify:", self.simplify_spin)
        self.tabs.addTab(out_box, "Outputs")

        self.results_table = QTableWidget(0, 3)  # filled after a run
        self.results_table.setHorizontalHeaderLabels(["Class", "Area (ha)", "Share (%)"])
        self.results_table.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        self.results_table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.results_table.verticalHeader().setVisible(False)
        self.tabs.addTab(self.results_table, "Results")

        self.run_button = self.add_run_controls(layout, "Run", "Cancel run")
        self.run_button.clicked.connect(self.run)

    def _load_settings(self) -> None:
        settings = PluginSettings.load()
        self.tile_spin.setValue(settings.tile_size)

    # ---- models -------------------------------------------------------------------------
    def _model_added(self, name: str) -> None:
        """An ONNX model was added: list the models again, with it chosen."""
        self._added_model = name
        self.load_models()

    def _stretch_raster(self, model: str) -> Path | None:
        """The chosen layer's file when ``model`` stretches each raster's contrast, else None.

        Deepness cannot stretch per raster, so such a model's export carries one raster's.
        """
        norm = (self.models.get(model) or {}).get("normalization") or {}
        layer = self.layer_combo.currentLayer()
        if not norm.get("per_raster"):
            return None
        if not isinstance(layer, QgsRasterLayer) or not is_plain_file(layer):
            return None
        return Path(layer.source().split("|")[0])

    def wanted_model(self) -> str:  # noqa: D102
        return self._added_model or super().wanted_model()

    def _model_changed(self, *_args) -> None:
        self._default_outputs()
        card = self.models.get(self.model_combo.currentText())
        if card is None:
            self.card_view.setHtml("")
            return
        classes = " ".join(
            f"<span style='background:{c['color']}'>&nbsp;&nbsp;&nbsp;</span> {c['name']}"
            for c in card["classes"]
        )
        metrics = card.get("metrics") or {}
        miou = (
            f"mIoU {metrics['miou']:.3f} on {html.escape(measured_on(metrics.get('on', '?')))}"
            if metrics.get("miou") is not None
            else "no metrics"
        )
        # the whole path where the score was measured, for whoever wants to find that data
        self.card_view.setToolTip(f"mIoU measured on {metrics['on']}" if "on" in metrics else "")
        resolution = card.get("resolution_m") or "any"
        limitations = card.get("limitations")
        # what a user choosing a model needs first: classes, accuracy, where it fails; then prose
        self.card_view.setHtml(
            f"<b>{card['name']}</b>: {miou}<br>{classes}<br>"
            f"bands: {', '.join(card['bands'])}; resolution: {resolution} m; "
            f"tile {card['tile_size']} px"
            + (f"<br><i>Known limitations:</i> {html.escape(limitations)}" if limitations else "")
            + f"<br>{html.escape(card.get('description', ''))}"
        )
        self._rebuild_band_rows(card["bands"])

    def _rebuild_band_rows(self, model_bands: list[str]) -> None:
        while self.bands_form.rowCount():
            self.bands_form.removeRow(0)
        self.band_combos = []
        layer = self.layer_combo.currentLayer()
        count = layer.bandCount() if isinstance(layer, QgsRasterLayer) else 0
        names = [layer.bandName(i) for i in range(1, count + 1)] if count else []
        interp = (
            [layer.dataProvider().colorInterpretationName(i).lower() for i in range(1, count + 1)]
            if count
            else []
        )
        for k, band in enumerate(model_bands):
            combo = QComboBox()
            combo.addItems([f"{i + 1}: {names[i]} ({interp[i]})" for i in range(count)])
            match = next(
                (i for i, name in enumerate(interp) if name.startswith(band.lower())), None
            )
            combo.setCurrentIndex(match if match is not None else min(k, max(count - 1, 0)))
            self.bands_form.addRow(f"{band}:", combo)
            self.band_combos.append(combo)

    # ---- layer --------------------------------------------------------------------------
    def _layer_changed(self, layer) -> None:
        if not isinstance(layer, QgsRasterLayer):
            self.export_note.setText("")
            return
        if is_plain_file(layer):
            self.export_note.setText("")
        else:
            self.export_note.setText(
                "This layer is not a plain raster file: it will be exported to a temporary "
                "GeoTIFF for the chosen extent first."
            )
        self.extent_box.setOriginalExtent(layer.extent(), layer.crs())
        self.extent_box.setCurrentExtent(layer.extent(), layer.crs())
        self.extent_box.setOutputCrs(layer.crs())
        self._model_changed()

    def _default_outputs(self) -> None:
        """``<input>_<model>.tif`` (and ``.shp``) beside the input, unless the user chose a path."""
        layer = self.layer_combo.currentLayer()
        if not isinstance(layer, QgsRasterLayer):
            return
        source = Path(layer.source().split("|")[0]) if is_plain_file(layer) else None
        folder, note = output_folder(source)
        stem = source.stem if source else re.sub(r"[^\w.-]+", "_", layer.name())
        name = f"{stem}_{self.model_combo.currentText() or 'classes'}"
        for widget, suffix in ((self.output_widget, ".tif"), (self.polygons_widget, ".shp")):
            if widget.filePath() in ("", self._defaults.get(suffix)):
                self._defaults[suffix] = str(folder / f"{name}{suffix}")
                widget.setFilePath(self._defaults[suffix])
        self.output_note.setText(note)

    # ---- run ----------------------------------------------------------------------------
    def parameters(self) -> dict:
        """The segment_layer parameters the widgets describe."""
        params = {
            "INPUT": self.layer_combo.currentLayer(),
            "MODEL": self.model_combo.currentText(),
            "BANDS": ",".join(str(c.currentIndex() + 1) for c in self.band_combos),
            "TILE_SIZE": self.tile_spin.value(),
            "OVERLAP": self.overlap_spin.value(),
            "DEVICE": self.device_combo.currentIndex(),
            "TTA": self.tta_check.isChecked(),
            "KEEP_CLASS_WEIGHTS": self.keep_weights_check.isChecked(),
            "OUTPUT": self.output_widget.filePath(),
            "MIN_AREA": self.min_area_spin.value(),
            "SIMPLIFY": self.simplify_spin.value(),
        }
        if self.extent_box.isChecked():
            params["EXTENT"] = self.extent_box.outputExtent()
        if self.polygons_check.isChecked():
            params["OUTPUT_VECTOR"] = self.polygons_widget.filePath()
        return params

    def run(self) -> None:
        """Start segment_layer as a background task."""
        if self.task is not None:
            return
        if (
            not isinstance(self.layer_combo.currentLayer(), QgsRasterLayer)
            or not self.model_combo.currentText()
        ):
            self.status.setText("Choose a raster layer and a model first.")
            return
        settings = PluginSettings.load()
        settings.last_model = self.model_combo.currentText()
        settings.tile_size = self.tile_spin.value()
        if self.output_widget.filePath():
            settings.output_folder = str(Path(self.output_widget.filePath()).parent)
        settings.save()
        self._started = time.monotonic()
        self._source_name = self.layer_combo.currentLayer().name()
        self.start("segment_plugin:segment_layer", "running…")

    @pyqtSlot(float)
    def _on_progress(self, value: float) -> None:
        """The bar, and an estimate of the time left in the status line."""
        super()._on_progress(value)
        elapsed = time.monotonic() - self._started
        if value >= 2 and elapsed > 2:
            remaining = elapsed * (100 - value) / value
            self.status.setText(f"running… about {_duration(remaining)} left")

    def _finished(self, ok: bool, results: dict) -> None:
        """Cancel or failure: one message, nothing partial stays; success: the layers."""
        self.run_ended()
        if not ok:
            self.show_failure()
            return
        self.last_results = results
        self.progress.setValue(100)
        summary = json.loads(results.get("SUMMARY") or "{}")
        raster_name, polygons_name = result_layer_names(self._source_name, summary.get("model"))
        classes_layer = QgsRasterLayer(results["OUTPUT"], raster_name)
        QgsProject.instance().addMapLayer(classes_layer)
        if results.get("OUTPUT_VECTOR"):
            polygons = QgsVectorLayer(results["OUTPUT_VECTOR"], polygons_name, "ogr")
            style_class_polygons(polygons, raster_classes(classes_layer))
            QgsProject.instance().addMapLayer(polygons)
        rows = area_summary(summary.get("class_area_m2") or {})
        self.results_table.setRowCount(len(rows))
        for row, (name, hectares, percent) in enumerate(rows):
            for column, text in enumerate((name, f"{hectares:,.2f}", f"{percent:.1f}")):
                item = QTableWidgetItem(text)
                if column:
                    item.setTextAlignment(Qt.AlignRight | Qt.AlignVCenter)
                self.results_table.setItem(row, column, item)
        self.tabs.setCurrentWidget(self.results_table)
        text = ", ".join(f"{name} {hectares:.2f} ha" for name, hectares, _ in rows)
        self.status.setText(f"Done: {text}")
        self.iface.messageBar().pushMessage("Segment Layer", text or "done", Qgis.Success, 10)
