"""Run the engine from a Processing algorithm: JSON events → feedback, isCanceled → terminate."""

from __future__ import annotations

from collections.abc import Sequence

from qgis.core import QgsProcessingFeedback
from qgis.PyQt.QtCore import pyqtSignal

from segment_plugin.runner import EngineLocation, EngineResult, run_engine
from segment_plugin.settings import PluginSettings


class DialogFeedback(QgsProcessingFeedback):
    """Feedback for a dialog that runs an algorithm as a task: last error kept, metrics as a signal.

    Both are written from the task's thread; ``metricsReceived`` is queued to the dialog's (GUI)
    thread by Qt, so the dialog can draw them as they come.
    """

    metricsReceived = pyqtSignal(dict)  # noqa: N815 - Qt naming
    progressTextReceived = pyqtSignal(str)  # noqa: N815 - 3.22's feedback has no such signal

    def __init__(self) -> None:
        super().__init__()
        self.last_error = ""

    def reportError(self, error: str, fatalError: bool = False) -> None:  # noqa: N802, N803
        """Remember the message, to show it in the dialog and on the message bar."""
        self.last_error = error
        super().reportError(error, fatalError)

    def setProgressText(self, text: str) -> None:  # noqa: N802
        """Also tell the dialog (e.g. "epoch 2/10, batch 7/50, about 90 s left")."""
        super().setProgressText(text)
        self.progressTextReceived.emit(text)


def metrics_text(values: dict) -> str:
    """One log line for an epoch's metrics (the toolbox shows these; dialogs plot them)."""
    if values.get("base"):
        return f"base model on the validation area: mIoU {values.get('val_miou')}"
    parts = [f"epoch {values.get('epoch')}"]
    for key in ("loss", "val_loss", "val_miou"):
        if isinstance(values.get(key), (int, float)):
            parts.append(f"{key} {values[key]:.4f}")
    if values.get("best"):
        parts.append("(best so far)")
    return ", ".join(parts)


def current_engine() -> EngineLocation:
    """The engine the plugin is configured to use."""
    return PluginSettings.load().engine()


def run_engine_with_feedback(
    args: Sequence[str], feedback: QgsProcessingFeedback, engine: EngineLocation | None = None
) -> EngineResult:
    """Run an engine command, mapping its events onto ``feedback``."""
    engine = engine or current_engine()
    if engine.python is None:
        return EngineResult(
            "missing", None, message="no engine environment: open Engine settings to create one"
        )

    def on_event(event: dict) -> None:
        kind = event["event"]
        if kind == "progress":
            feedback.setProgress(100.0 * float(event.get("fraction") or 0.0))
            if event.get("message"):
                eta = event.get("eta_s")
                suffix = f", about {eta:.0f} s left" if isinstance(eta, (int, float)) else ""
                feedback.setProgressText(event["message"] + suffix)
        elif kind == "log":
            if event.get("level") == "warning":
                feedback.pushWarning(event["message"])
            else:
                feedback.pushInfo(event["message"])
        elif kind == "metrics":
            values = event.get("values") or {}
            feedback.pushInfo(metrics_text(values))
            if isinstance(feedback, DialogFeedback):
                feedback.metricsReceived.emit(values)

    return run_engine(
        args,
        engine.python,
        on_event=on_event,
        is_canceled=feedback.isCanceled,
        on_output=feedback.pushDebugInfo,
    )
