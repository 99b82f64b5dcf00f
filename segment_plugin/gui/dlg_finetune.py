"""The Fine-tune model dialog: the user's labels in, a new model (and its measured gain) out.

Like the Segment Layer dialog it only collects parameters and shows progress: the work is the
Processing algorithm ``segment_plugin:fine_tune`` run by a QgsProcessingAlgRunnerTask. The engine
streams one ``metrics`` event per epoch (and the base model's score first, as epoch 0); they
arrive through :class:`DialogFeedback` and feed the live chart and the per-class IoU table.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from qgis.core import (
    Qgis,
    QgsCoordinateTransform,
    QgsMapLayerProxyModel,
    QgsProcessingFeatureSourceDefinition,
    QgsProject,
    QgsRasterLayer,
    QgsVectorLayer,
)
from qgis.gui import QgsExtentGroupBox, QgsFieldComboBox, QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt, pyqtSignal, pyqtSlot
from qgis.PyQt.QtGui import QColor
from qgis.PyQt.QtWidgets import (
    QCheckBox,
    QColorDialog,
    QComboBox,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QLineEdit,
    QPushButton,
    QRadioButton,
    QScrollArea,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from segment_plugin.gui.algorithm_dialog import AlgorithmDialog
from segment_plugin.gui.label_values import field_values, raster_values
from segment_plugin.gui.metrics_chart import MetricsChart
from segment_plugin.processing.alg_segment_layer import DEVICES
from segment_plugin.processing.alg_training import PATCHES
from segment_plugin.processing.engine_feedback import DialogFeedback
from segment_plugin.settings import PluginSettings

IGNORE = 255
# a label value that is "some class not mapped here" (e.g. "not road"): the engine's partial labels
OTHER = "other"
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.-") or "model"


def run_info(report: dict, names: list[str]) -> str:
    """What the engine trained with: class weights, validation area, and a hand-back's reason."""
    lines = []
    weights = report.get("class_weights")
    if weights:
        lines.append(
            "Class weights used: " + ", ".join(f"{n} {w:.2f}" for n, w in zip(names, weights))
        )
    validation = report.get("validation") or []
    if validation:
        lines.append(
            "Validated on: " + "; ".join(validation[:4]) + (" …" if len(validation) > 4 else "")
        )
    if report.get("handed_back"):
        lines.append("Base model handed back: " + report["handed_back"])
    return "\n".join(lines)


def _iou_text(value) -> str:
    return "—" if value is None else f"{value:.3f}"


class FineTuneDialog(AlgorithmDialog):
    """Fine-tune a model on the user's labels: live chart, per-class IoU, before/after."""

    modelTrained = pyqtSignal(str)  # noqa: N815 - the new model's name (also after a cancel)

    RUN_NAME = "Fine-tuning"

    def __init__(self, iface, parent=None) -> None:
        super().__init__(iface, parent)
        self.setWindowTitle("Fine-tune model")
        self.resize(1100, 660)  # a 1366×768 laptop, with title bar and taskbar
        self.setMinimumSize(900, 600)
        self.new_classes: list[dict] = []
        self._base: str | None = None
        self.before: dict = {}
        self._build()
        self.raster_combo.layerChanged.connect(self._suggest_name)
        self.polygon_combo.layerChanged.connect(self.field_combo.setLayer)
        self.field_combo.fieldChanged.connect(self.refresh_mapping)
        self.label_raster_combo.layerChanged.connect(self.refresh_mapping)
        self.polygons_radio.toggled.connect(self._label_kind_changed)
        self.model_combo.currentIndexChanged.connect(self._model_changed)
        self.field_combo.setLayer(self.polygon_combo.currentLayer())
        self._label_kind_changed()
        self.load_models()

    # ---- construction -------------------------------------------------------------------
    def _build(self) -> None:
        layout = QHBoxLayout(self)
        left, right = QVBoxLayout(), QVBoxLayout()
        left.setContentsMargins(0, 0, 0, 0)
        left_panel = QWidget()
        left_panel.setLayout(left)
        scroll = QScrollArea()  # small screens: the inputs scroll, the chart stays in view
        scroll.setWidget(left_panel)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QScrollArea.NoFrame)
        scroll.setMinimumWidth(500)
        scroll.setMaximumWidth(520)
        layout.addWidget(scroll)
        layout.addLayout(right, 1)

        form = QFormLayout()
        self.raster_combo = QgsMapLayerComboBox()
        self.raster_combo.setFilters(QgsMapLayerProxyModel.RasterLayer)
        active = self.iface.activeLayer()
        if isinstance(active, QgsRasterLayer):
            self.raster_combo.setLayer(active)
        form.addRow("Image raster:", self.raster_combo)
        left.addLayout(form)

        labels_box = QGroupBox("Labels")
        labels_form = QFormLayout(labels_box)
        self.polygons_radio = QRadioButton("polygons")
        self.polygons_radio.setChecked(True)
        self.raster_radio = QRadioButton("class raster")
        kinds = QHBoxLayout()
        kinds.addWidget(self.polygons_radio)
        kinds.addWidget(self.raster_radio)
        labels_form.addRow("Labels are:", kinds)
        self.polygon_combo = QgsMapLayerComboBox()
        self.polygon_combo.setFilters(QgsMapLayerProxyModel.PolygonLayer)
        self.field_combo = QgsFieldComboBox()
        self.selected_check = QCheckBox("selected features only")
        self.label_raster_combo = QgsMapLayerComboBox()
        self.label_raster_combo.setFilters(QgsMapLayerProxyModel.RasterLayer)
        labels_form.addRow("Polygon layer:", self.polygon_combo)
        labels_form.addRow("Class field:", self.field_combo)
        labels_form.addRow("", self.selected_check)
        labels_form.addRow("Class raster:", self.label_raster_combo)
        left.addWidget(labels_box)
        mapping_box = QGroupBox("Label value → model class")
        labels_layout = QVBoxLayout(mapping_box)
        self.mapping_table = QTableWidget(0, 2)
        self.mapping_table.setHorizontalHeaderLabels(["Label value", "Model class"])
        self.mapping_table.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        self.mapping_table.verticalHeader().hide()
        self.mapping_table.setMinimumHeight(120)
        labels_layout.addWidget(self.mapping_table)
        self.add_class_button = QPushButton("Add a new class…")
        self.add_class_button.setToolTip("A class the base model does not have (name, colour)")
        self.add_class_button.clicked.connect(self._ask_new_class)
        labels_layout.addWidget(self.add_class_button)
        left.addWidget(mapping_box, 1)

        self.extent_box = QgsExtentGroupBox()
        self.extent_box.setTitle("Area of interest (default: the whole raster)")
        self.extent_box.setCheckable(True)
        self.extent_box.setChecked(False)
        self.extent_box.setCollapsed(True)
        if self.iface.mapCanvas() is not None:
            self.extent_box.setMapCanvas(self.iface.mapCanvas())
        left.addWidget(self.extent_box)

        model_box = QGroupBox("Model")
        model_form = QFormLayout(model_box)
        self.model_combo = QComboBox()
        self.card_label = QLabel()
        self.card_label.setWordWrap(True)
        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("letters, digits, _ . -")
        model_form.addRow("Base model:", self.model_combo)
        model_form.addRow("", self.card_label)
        model_form.addRow("New model name:", self.name_edit)
        left.addWidget(model_box)

        train_box = QGroupBox("Training")
        train_form = QFormLayout(train_box)
        self.patch_combo = QComboBox()
        self.patch_combo.addItems(PATCHES)
        self.patch_combo.setCurrentIndex(1)
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(1, 500)
        self.epochs_spin.setValue(10)
        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setDecimals(6)
        self.lr_spin.setRange(1e-6, 0.1)
        self.lr_spin.setSingleStep(1e-4)
        self.lr_spin.setValue(1e-4)
        self.val_spin = QDoubleSpinBox()
        self.val_spin.setRange(0.05, 0.5)
        self.val_spin.setSingleStep(0.05)
        self.val_spin.setValue(0.2)
        self.freeze_check = QCheckBox("freeze the encoder")
        self.freeze_check.setToolTip(
            "Train the decoder only: faster, and forgets less of the classes your labels do not "
            "name, but learns a new kind of imagery (satellite, another sensor) far less"
        )
        self.augment_check = QCheckBox("augmentation")
        self.augment_check.setToolTip("Random flips, rotations, scale 0.5–2× and colour jitter")
        self.augment_check.setChecked(True)
        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICES)
        train_form.addRow("Patch size (px):", self.patch_combo)
        train_form.addRow("Epochs:", self.epochs_spin)
        train_form.addRow("Learning rate:", self.lr_spin)
        train_form.addRow("Validation share (by area):", self.val_spin)
        train_form.addRow("", self.freeze_check)
        train_form.addRow("", self.augment_check)
        train_form.addRow("Device:", self.device_combo)
        left.addWidget(train_box)

        self.chart = MetricsChart()
        right.addWidget(self.chart, 2)
        self.iou_table = QTableWidget(0, 3)
        self.iou_table.setHorizontalHeaderLabels(["Class", "Base model", "Latest epoch"])
        self.iou_table.horizontalHeader().setSectionResizeMode(QHeaderView.Stretch)
        self.iou_table.verticalHeader().hide()
        right.addWidget(QLabel("Per-class IoU on the validation area"))
        right.addWidget(self.iou_table, 1)
        self.run_info = QLabel()  # class weights used, validation area, why the base came back
        self.run_info.setWordWrap(True)
        right.addWidget(self.run_info)
        self.train_button = self.add_run_controls(right, "Train", "Cancel training")
        self.train_button.clicked.connect(self.train)
        self.full_engine_button = QPushButton("Set up the full engine…")
        self.full_engine_button.setToolTip(
            "This engine is inference-only (ONNX Runtime, no TensorFlow): it segments but "
            "cannot train. Create a full engine environment in the engine dialog."
        )
        self.full_engine_button.clicked.connect(self.set_up_full_engine)
        self.buttons.addButton(self.full_engine_button, QDialogButtonBox.ActionRole)
        self.full_engine_button.setVisible(False)  # after addButton, which shows it

    def engine_kind_known(self, kind: str) -> None:
        """An inference-only engine cannot train: say so before the user prepares a run."""
        light = kind == "inference-only"
        self.full_engine_button.setVisible(light)
        self.train_button.setEnabled(not light)
        if light:
            self.run_info.setText(
                "<b>Fine-tuning needs the full engine</b> (TensorFlow). This engine is "
                "inference-only: it segments with ONNX models but cannot train."
            )

    def set_up_full_engine(self):
        """The engine dialog, with the full kind chosen (it creates one in a new folder)."""
        from segment_plugin.gui.dlg_engine import EngineDialog

        dialog = EngineDialog(self)
        dialog.kind_combo.setCurrentIndex(dialog.kind_combo.findData("full"))
        dialog.show()
        return dialog

    def _label_kind_changed(self, *_args) -> None:
        polygons = self.polygons_radio.isChecked()
        for widget in (self.polygon_combo, self.field_combo, self.selected_check):
            widget.setEnabled(polygons)
        self.label_raster_combo.setEnabled(not polygons)
        self.refresh_mapping()

    # ---- models -------------------------------------------------------------------------
    def wanted_model(self) -> str:
        """Keep the chosen base model when the list is reloaded; else the one used last."""
        return self.model_combo.currentText() or super().wanted_model()

    def _model_changed(self, *_args) -> None:
        card = self.models.get(self.model_combo.currentText())
        if card is None:
            self.card_label.setText("")
            return
        metrics = card.get("metrics") or {}
        miou = f", mIoU {metrics['miou']:.3f}" if metrics.get("miou") is not None else ""
        self.card_label.setText(f"{len(card['classes'])} classes, {len(card['bands'])} bands{miou}")
        self.card_label.setToolTip(
            f"classes: {', '.join(c['name'] for c in card['classes'])}\n"
            f"bands: {', '.join(card['bands'])}\n{card.get('description', '')}"
            + (f"\nknown limitations: {card['limitations']}" if card.get("limitations") else "")
        )
        if card["name"] != self._base:  # classes added for another base model do not carry over
            self._base, self.new_classes = card["name"], []
        self._suggest_name()
        self.refresh_mapping()

    def classes(self) -> list[dict]:
        """The new model's classes: the base model's, then any added in this dialog."""
        card = self.models.get(self.model_combo.currentText()) or {"classes": []}
        return [*card["classes"], *self.new_classes]

    def add_class(self, name: str, color: str) -> int:
        """A class the base model does not have (its head is re-initialised); returns its code."""
        codes = [c["code"] for c in self.classes()]
        code = next(c for c in range(len(codes) + 1) if c not in codes)
        self.new_classes.append({"code": code, "name": name, "color": QColor(color).name()})
        self.refresh_mapping()
        return code

    def _ask_new_class(self) -> None:
        name, ok = QInputDialog.getText(self, "New class", "Class name:")
        if not ok or not name.strip():
            return
        color = QColorDialog.getColor(QColor("#9467bd"), self, f"Colour of {name}")
        if color.isValid():
            self.add_class(name.strip(), color.name())

    def _suggest_name(self, *_args) -> None:
        layer = self.raster_combo.currentLayer()
        base = self.model_combo.currentText()
        if base and layer is not None and not self.name_edit.isModified():
            self.name_edit.setText(_safe_name(f"{base}_{layer.name()}"))

    # ---- labels and mapping -------------------------------------------------------------
    def label_values(self) -> list:
        """The distinct values of the chosen labels (field values or class raster values)."""
        if self.polygons_radio.isChecked():
            layer = self.polygon_combo.currentLayer()
            field = self.field_combo.currentField()
            return field_values(layer, field) if layer is not None and field else []
        layer = self.label_raster_combo.currentLayer()
        return raster_values(layer) if isinstance(layer, QgsRasterLayer) else []

    def refresh_mapping(self, *_args) -> None:
        """One row per label value; a value that is a class code or name is mapped to it."""
        classes = self.classes()
        by_code = {str(c["code"]): c["code"] for c in classes}
        by_name = {c["name"].lower(): c["code"] for c in classes}
        previous = self.mapping()
        self.mapping_table.setRowCount(0)
        for value in self.label_values():
            row = self.mapping_table.rowCount()
            self.mapping_table.insertRow(row)
            item = QTableWidgetItem(str(value))
            item.setFlags(item.flags() & ~Qt.ItemIsEditable)
            self.mapping_table.setItem(row, 0, item)
            combo = QComboBox()
            combo.addItem("— choose a class —", None)
            for c in classes:
                combo.addItem(f"{c['code']}: {c['name']}", c["code"])
            combo.addItem("ignore (leave out)", IGNORE)
            combo.addItem("other (none of the classes mapped here)", OTHER)
            text = str(value)
            wanted = previous.get(text, by_code.get(text, by_name.get(text.lower())))
            if wanted is None and text == str(IGNORE):  # LandCover.ai's "unlabelled"
                wanted = IGNORE
            if wanted is not None:
                combo.setCurrentIndex(max(0, combo.findData(wanted)))
            self.mapping_table.setCellWidget(row, 1, combo)

    def mapping(self) -> dict[str, int | str]:
        """Label value (as text) → class code (or "other"), for the rows that have a class."""
        result = {}
        for row in range(self.mapping_table.rowCount()):
            combo = self.mapping_table.cellWidget(row, 1)
            if combo is not None and combo.currentData() is not None:
                data = combo.currentData()
                result[self.mapping_table.item(row, 0).text()] = (
                    OTHER if data == OTHER else int(data)
                )
        return result

    def set_mapping(self, value: str, code: int | str) -> None:
        """Map one label value to a class code (what choosing in the table does)."""
        for row in range(self.mapping_table.rowCount()):
            if self.mapping_table.item(row, 0).text() == str(value):
                combo = self.mapping_table.cellWidget(row, 1)
                combo.setCurrentIndex(combo.findData(code))

    # ---- checks and parameters ----------------------------------------------------------
    def problem(self) -> str | None:
        """What stops a run, checked at once (before the engine starts), or None."""
        raster = self.raster_combo.currentLayer()
        if not isinstance(raster, QgsRasterLayer):
            return "Choose the image raster layer."
        if not self.model_combo.currentText():
            return "Choose a base model (none found: see Engine settings)."
        name = self.name_edit.text().strip()
        if not re.fullmatch(NAME_PATTERN, name):
            return "Give the new model a name (letters, digits, _ . -)."
        if name in self.models or (self.user_dir and (Path(self.user_dir) / name).exists()):
            return f"A model named {name!r} exists: choose another name."
        labels = self._labels_layer()
        if labels is None:
            return "Choose the labels: a polygon layer and its class field, or a class raster."
        if self.polygons_radio.isChecked():
            if not self.field_combo.currentField():
                return "Choose the field that holds the class."
            if self.selected_check.isChecked() and labels.selectedFeatureCount() == 0:
                return "'Selected features only' is ticked but no label polygon is selected."
            if labels.featureCount() == 0:
                return f"The layer {labels.name()} has no polygons."
        transform = QgsCoordinateTransform(labels.crs(), raster.crs(), QgsProject.instance())
        try:
            overlaps = transform.transformBoundingBox(labels.extent()).intersects(raster.extent())
        except Exception:  # noqa: BLE001 - QgsCsException: the labels are far outside the CRS
            overlaps = False
        if not overlaps:
            return f"The labels in {labels.name()} do not overlap {raster.name()}."
        values = [
            self.mapping_table.item(r, 0).text() for r in range(self.mapping_table.rowCount())
        ]
        unmapped = [v for v in values if v not in self.mapping()]
        if unmapped:
            return f"Choose a class (or ignore) for the label values: {', '.join(unmapped)}."
        if not [c for c in self.mapping().values() if c not in (IGNORE, OTHER)]:
            return "Every label value is ignored or other: map at least one to a class."
        return None

    def _labels_layer(self):
        if self.polygons_radio.isChecked():
            layer = self.polygon_combo.currentLayer()
            return layer if isinstance(layer, QgsVectorLayer) else None
        layer = self.label_raster_combo.currentLayer()
        return layer if isinstance(layer, QgsRasterLayer) else None

    def parameters(self) -> dict:
        """The fine_tune parameters the widgets describe."""
        params = {
            "INPUT": self.raster_combo.currentLayer(),
            "MAPPING": json.dumps(self.mapping()),
            "BASE_MODEL": self.model_combo.currentText(),
            "NAME": self.name_edit.text().strip(),
            "EPOCHS": self.epochs_spin.value(),
            "PATCH": self.patch_combo.currentIndex(),
            "LEARNING_RATE": self.lr_spin.value(),
            "VAL_FRACTION": self.val_spin.value(),
            "FREEZE_ENCODER": self.freeze_check.isChecked(),
            "AUGMENT": self.augment_check.isChecked(),
            "DEVICE": self.device_combo.currentIndex(),
        }
        labels = self._labels_layer()
        if self.polygons_radio.isChecked():
            params["LABELS"] = QgsProcessingFeatureSourceDefinition(
                labels.id(), self.selected_check.isChecked()
            )
            params["FIELD"] = self.field_combo.currentField()
        else:
            params["LABEL_RASTER"] = labels
        if self.new_classes:
            params["CLASSES"] = json.dumps(self.classes())
        if self.extent_box.isChecked():
            params["EXTENT"] = self.extent_box.outputExtent()
        return params

    # ---- run ----------------------------------------------------------------------------
    def train(self) -> None:
        """Check the inputs, then start fine_tune as a background task."""
        if self.task is not None:
            return
        problem = self.problem()
        if problem:
            self.last_error = problem
            self.status.setText(problem)
            return
        self.before = {}
        self.run_info.setText("")
        self.chart.reset(self.epochs_spin.value())
        self._reset_iou_table(["Base model", "Latest epoch", "Best"])
        self.start("segment_plugin:fine_tune", "preparing the labels and the base model…")

    def connect_feedback(self, feedback: DialogFeedback) -> None:
        """Also the engine's progress text and per-epoch metrics."""
        super().connect_feedback(feedback)
        feedback.progressTextReceived.connect(self._on_progress_text)
        feedback.metricsReceived.connect(self._on_metrics)

    def _reset_iou_table(self, headers: list[str]) -> None:
        names = [c["name"] for c in self.classes()]
        self.iou_table.setColumnCount(1 + len(headers))
        self.iou_table.setHorizontalHeaderLabels(["Class", *headers])
        self.iou_table.setRowCount(len(names))
        for row, name in enumerate(names):
            self.iou_table.setItem(row, 0, QTableWidgetItem(name))
            for column in range(1, 1 + len(headers)):
                self.iou_table.setItem(row, column, QTableWidgetItem("—"))

    def _set_iou_column(self, column: int, per_class: dict) -> None:
        for row in range(self.iou_table.rowCount()):
            name = self.iou_table.item(row, 0).text()
            self.iou_table.setItem(row, column, QTableWidgetItem(_iou_text(per_class.get(name))))

    @pyqtSlot(str)
    def _on_progress_text(self, text: str) -> None:
        self.status.setText(f"training: {text}")

    @pyqtSlot(dict)
    def _on_metrics(self, values: dict) -> None:
        """One epoch (or the base model, epoch 0): chart point and IoU table column."""
        self.chart.add(values)
        per_class = values.get("val_per_class_iou") or {}
        if values.get("base"):
            self.before = values
            self._set_iou_column(1, per_class)
            return
        self._set_iou_column(2, per_class)
        if values.get("best"):
            self._set_iou_column(3, per_class)

    def cancel(self) -> None:
        """Stop after the current batch: the engine ends, the best epoch so far is kept."""
        if self.feedback is not None:
            super().cancel()
            self.status.setText("cancelling after the current batch…")

    def _finished(self, ok: bool, results: dict) -> None:
        self.run_ended()
        name = self.name_edit.text().strip()
        if not ok:
            kept = (
                self.user_dir is not None and (Path(self.user_dir) / name / "model.json").exists()
            )
            note = f"; the best epoch so far is kept as model {name!r}" if kept else ""
            self.show_failure(cancelled_note=note)
            if kept:
                self.modelTrained.emit(name)
            return
        self.last_results = results
        self.progress.setValue(100)
        report = json.loads(results.get("REPORT") or "{}")
        before = (report.get("base_val_report") or {}).get("per_class_iou") or {}
        after = (report.get("val_report") or {}).get("per_class_iou") or {}
        self._show_comparison(before, after, bool(report.get("handed_back")))
        self.run_info.setText(run_info(report, [c["name"] for c in self.classes()]))
        text = (
            f"model {name!r}: validation mIoU {_iou_text(results.get('MIOU_BEFORE'))} (base) → "
            f"{_iou_text(results.get('MIOU_AFTER'))} (fine-tuned)"
        )
        if report.get("handed_back"):
            text += " — no clear gain, so the new model is the base model unchanged"
        self.status.setText(f"Done — {text}. It is now in the Segment Layer dialog's models.")
        self.iface.messageBar().pushMessage("Fine-tune model", text, Qgis.Success, 10)
        settings = PluginSettings.load()
        settings.last_model = name
        settings.save()
        self.modelTrained.emit(name)
        self.load_models()

    def _show_comparison(self, before: dict, after: dict, handed_back: bool = False) -> None:
        """Before/after per class, the change coloured (green better, red worse).

        When the base model was handed back, "After" is the base itself: the header says so.
        """
        after_header = "After (base handed back)" if handed_back else "After"
        self._reset_iou_table(["Before", after_header, "Change"])
        self._set_iou_column(1, before)
        self._set_iou_column(2, after)
        for row in range(self.iou_table.rowCount()):
            name = self.iou_table.item(row, 0).text()
            old, new = before.get(name), after.get(name)
            if old is None or new is None:
                continue
            item = QTableWidgetItem(f"{new - old:+.3f}")
            item.setForeground(QColor("#1a7f37" if new >= old else "#c62828"))
            self.iou_table.setItem(row, 3, item)
