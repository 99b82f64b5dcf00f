"""The model picker's ONNX buttons: add a Deepness/ONNX model, export the chosen one to ONNX.

Both run the engine in a background task (``models --add``, ``export-onnx``) and report in the
dialog's status line; adding reloads the model list with the new model chosen.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from qgis.core import QgsApplication
from qgis.PyQt.QtWidgets import QFileDialog, QHBoxLayout, QPushButton, QWidget

from segment_plugin.settings import PluginSettings
from segment_plugin.tasks.engine_task import EngineCommandTask


class OnnxModelButtons(QWidget):
    """Add ONNX model… and Export to ONNX… beside a model combo box."""

    def __init__(
        self,
        current_model: Callable[[], str],
        models_changed: Callable[[str], None],
        report: Callable[[str], None],
        stretch_raster: Callable[[str], Path | None] = lambda _model: None,
        parent=None,
    ) -> None:
        super().__init__(parent)
        self._current_model = current_model
        self._stretch_raster = stretch_raster
        self._models_changed = models_changed
        self._report = report
        self.task: EngineCommandTask | None = None
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.add_button = QPushButton("Add ONNX model…")
        self.add_button.setToolTip(
            "Add a Deepness model or any ONNX segmentation model to your models "
            "(class names, resolution and tile size are read from its metadata)"
        )
        self.add_button.clicked.connect(self._choose_model)
        self.export_button = QPushButton("Export to ONNX…")
        self.export_button.setToolTip(
            "Save the chosen model as one ONNX file that Deepness and other tools run "
            "(needs the full engine)"
        )
        self.export_button.clicked.connect(self._choose_export)
        layout.addWidget(self.add_button)
        layout.addWidget(self.export_button)
        layout.addStretch(1)

    def _choose_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "ONNX model", "", "ONNX models (*.onnx)")
        if path:
            self.add_model(Path(path))

    def _choose_export(self) -> None:
        model = self._current_model()
        path, _ = QFileDialog.getSaveFileName(
            self, "Export to ONNX", f"{model}.onnx", "ONNX models (*.onnx)"
        )
        if path:
            self.export_model(model, Path(path))

    def add_model(self, path: Path) -> EngineCommandTask:
        """``models --add path`` in the background; the list reloads on the new model."""
        self._report(f"adding {path.name}…")
        # no --overwrite: a model of that name is the user's to remove, the message says so
        return self._run(["models", "--add", str(path)], self._added)

    def export_model(self, model: str, path: Path) -> EngineCommandTask:
        """``export-onnx model --output path`` in the background.

        A model that stretches each raster's contrast gets the chosen raster's stretch.
        """
        args = ["export-onnx", model, "--output", str(path), "--overwrite"]
        raster = self._stretch_raster(model)
        if raster is None:
            self._report(f"exporting {model} to ONNX…")
        else:
            self._report(f"exporting {model} to ONNX with the contrast stretch of {raster.name}…")
            args += ["--stretch-of", str(raster)]
        return self._run(args, lambda outcome: self._exported(outcome, path))

    def _run(self, args: list[str], done: Callable) -> EngineCommandTask:
        self.add_button.setEnabled(False)
        self.export_button.setEnabled(False)
        python = PluginSettings.load().engine().python
        self.task = EngineCommandTask("Segment Plugin: ONNX model", args, python)
        self.task.completed.connect(done)
        QgsApplication.taskManager().addTask(self.task)
        return self.task

    def _done(self, outcome) -> bool:
        self.task = None
        self.add_button.setEnabled(True)
        self.export_button.setEnabled(True)
        if not outcome.ok:
            self._report(f"<b>ONNX</b>: {outcome.message}")
        return outcome.ok

    def _added(self, outcome) -> None:
        if self._done(outcome):
            name = outcome.data["card"]["name"]
            self._report(f"added model {name!r}")
            self._models_changed(name)

    def _exported(self, outcome, path: Path) -> None:
        if self._done(outcome):
            self._report(f"wrote {path} ({outcome.data['bytes'] / 1e6:.1f} MB)")
