"""What the Segment Layer and Fine-tune model dialogs share: models, devices, one algorithm run.

Both list the engine's models and devices in background tasks, run one Processing algorithm
as a QgsProcessingAlgRunnerTask with a progress bar, a status line and Cancel, and report a
failure as one message (dialog and message bar). Subclasses build their own inputs, provide
``model_combo``, ``device_combo``, ``_model_changed``, ``parameters`` and ``_finished``.
"""

from __future__ import annotations

from qgis.core import (
    Qgis,
    QgsApplication,
    QgsProcessingAlgRunnerTask,
    QgsProcessingContext,
    QgsProject,
)
from qgis.PyQt.QtCore import pyqtSlot
from qgis.PyQt.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
)

from segment_plugin.gui.engine_devices import request_devices, show_devices
from segment_plugin.processing.engine_feedback import DialogFeedback
from segment_plugin.settings import PluginSettings
from segment_plugin.tasks.engine_task import EngineCommandTask


class AlgorithmDialog(QDialog):
    """A dialog that runs one of the plugin's Processing algorithms in the background."""

    #: how the status line names a failed run, e.g. "Segmentation: cancelled"
    RUN_NAME = "Run"

    def __init__(self, iface, parent=None) -> None:
        super().__init__(parent or iface.mainWindow())
        self.iface = iface
        self.models: dict[str, dict] = {}
        self.user_dir: str | None = None
        self.task: QgsProcessingAlgRunnerTask | None = None
        self.feedback: DialogFeedback | None = None
        self.last_results: dict | None = None
        self.last_error: str | None = None
        self._models_task: EngineCommandTask | None = None
        self._devices_task: EngineCommandTask | None = None
        self.devices_known = False

    def add_run_controls(self, layout, run_text: str, cancel_text: str):
        """Progress bar, status line and Close / run / cancel buttons; returns the run button."""
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.status = QLabel()
        self.status.setWordWrap(True)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        self.buttons = QDialogButtonBox(QDialogButtonBox.Close)
        run_button = self.buttons.addButton(run_text, QDialogButtonBox.AcceptRole)
        self.cancel_button = self.buttons.addButton(cancel_text, QDialogButtonBox.ActionRole)
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)
        self._run_button = run_button
        return run_button

    # ---- models and devices -------------------------------------------------------------
    def load_models(self) -> None:
        """Ask the engine for the installed models and its devices (background tasks)."""
        if self.last_results is None and self.last_error is None:  # keep a run's outcome shown
            self.status.setText("looking for models…")
        task = EngineCommandTask(
            "Segment Plugin: listing models", ["models"], PluginSettings.load().engine().python
        )
        task.completed.connect(self._models_loaded)
        self._models_task = task
        QgsApplication.taskManager().addTask(task)
        if not self.devices_known and self._devices_task is None:
            self._devices_task = request_devices(self._devices_loaded)

    def _devices_loaded(self, outcome) -> None:
        """Show what the engine found: auto → the device it will use; gpu disabled without one."""
        self._devices_task = None
        self.devices_known = show_devices(self.device_combo, outcome)
        if outcome.ok:
            self.engine_kind_known(outcome.data.get("kind", "full"))

    def engine_kind_known(self, kind: str) -> None:
        """The engine said which kind it is (``full``, ``inference-only``); a hook."""

    def wanted_model(self) -> str:
        """The model to select once the list is loaded: the one used last."""
        return PluginSettings.load().last_model

    def _models_loaded(self, outcome) -> None:
        self._models_task = None
        if not outcome.ok:
            self.status.setText(f"<b>No engine</b>: {outcome.message}")
            return
        self.user_dir = outcome.data.get("user_dir")
        self.models = {
            entry["card"]["name"]: entry["card"]
            for entry in outcome.data.get("models", [])
            if "card" in entry
        }
        wanted = self.wanted_model()
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        self.model_combo.addItems(sorted(self.models))
        if wanted in self.models:
            self.model_combo.setCurrentText(wanted)
        self.model_combo.blockSignals(False)
        if self.last_results is None and self.last_error is None:
            self.status.setText(
                f"{len(self.models)} model(s) found" if self.models else "no models installed"
            )
        self._model_changed()

    # ---- the run ------------------------------------------------------------------------
    def start(self, algorithm_id: str, status: str) -> None:
        """Run the algorithm with ``self.parameters()`` as a background task."""
        algorithm = QgsApplication.processingRegistry().algorithmById(algorithm_id)
        self.context = QgsProcessingContext()
        self.context.setProject(QgsProject.instance())
        self.feedback = DialogFeedback()
        self.connect_feedback(self.feedback)
        self.task = QgsProcessingAlgRunnerTask(
            algorithm, self.parameters(), self.context, self.feedback
        )
        self.task.executed.connect(self._finished)
        self.last_results, self.last_error = None, None
        self._run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.status.setText(status)
        QgsApplication.taskManager().addTask(self.task)

    def connect_feedback(self, feedback: DialogFeedback) -> None:
        """Connect the run's feedback to slots of this dialog.

        Qt queues each call to the GUI thread, since the task runs in another one.
        """
        feedback.progressChanged.connect(self._on_progress)

    @pyqtSlot(float)
    def _on_progress(self, value: float) -> None:
        self.progress.setValue(int(value))

    def cancel(self) -> None:
        """Stop the run: the engine process is terminated."""
        if self.feedback is not None:
            self.feedback.cancel()

    def showEvent(self, event) -> None:  # noqa: N802 - Qt override
        """Enter runs, whichever widget made its own button the default (the extent box does)."""
        for button in self.findChildren(QPushButton):
            button.setAutoDefault(False)
            button.setDefault(button is self._run_button)
        super().showEvent(event)

    def confirm_cancel(self) -> bool:
        """Ask before a close (Esc, Close) cancels a running task."""
        answer = QMessageBox.question(
            self,
            self.windowTitle(),
            f"{self.RUN_NAME} is still running. Cancel it and close?",
            QMessageBox.Yes | QMessageBox.No,
            QMessageBox.No,
        )
        return answer == QMessageBox.Yes

    def reject(self) -> None:  # noqa: D102 - Esc and Close: ask first while a run is going on
        if self.task is not None:
            if not self.confirm_cancel():
                return
            self.cancel()
        super().reject()

    def run_ended(self) -> None:
        """The task is over (either way): the buttons are back."""
        self.task = None
        self._run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def show_failure(self, cancelled_note: str = "") -> None:
        """One message for a failed run, in the status line and (unless cancelled) the bar.

        ``cancelled_note`` is added to "cancelled", e.g. what was kept.
        """
        if self.feedback is not None and self.feedback.isCanceled():
            self.last_error = "cancelled" + cancelled_note
        else:
            reason = self.feedback.last_error if self.feedback is not None else ""
            self.last_error = reason or "failed (see the Processing log)"
            self.iface.messageBar().pushMessage(
                self.windowTitle(), self.last_error, Qgis.Critical, 0
            )
        self.status.setText(f"{self.RUN_NAME}: {self.last_error}")
        self.progress.setValue(0)
