"""Run one engine command in QGIS's task manager.

The task thread only runs the subprocess and forwards events through Qt signals (queued to the
GUI thread); widgets are updated by whoever connects to them. Any exception is captured in
``run`` and reported as a failed :class:`~segment_plugin.runner.EngineResult`, never raised
into QGIS.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from qgis.core import QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from segment_plugin.runner import EngineResult, run_engine


class EngineCommandTask(QgsTask):
    """``python -m segment_plugin.engine ARGS --progress json`` as a cancellable QgsTask."""

    eventReceived = pyqtSignal(dict)  # noqa: N815 - Qt naming
    outputReceived = pyqtSignal(str)  # noqa: N815
    completed = pyqtSignal(object)  # EngineResult, emitted in the GUI thread

    def __init__(self, description: str, args: Sequence[str], python: Path | None) -> None:
        super().__init__(description, QgsTask.CanCancel)
        self._args = list(args)
        self._python = python
        self.outcome = EngineResult("error", None, message="not run")

    def run(self) -> bool:
        """Worker thread: run the engine; the outcome goes to ``self.outcome``."""
        if self._python is None:
            self.outcome = EngineResult(
                "missing", None, message="no engine environment: open Engine settings to create one"
            )
            return False
        try:
            self.outcome = run_engine(
                self._args,
                self._python,
                on_event=self._on_event,
                is_canceled=self.isCanceled,
                on_output=self.outputReceived.emit,
            )
        except Exception as exc:  # noqa: BLE001 - a task must never raise into QGIS
            self.outcome = EngineResult("error", None, message=f"{type(exc).__name__}: {exc}")
        return self.outcome.ok

    def _on_event(self, event: dict) -> None:
        if event["event"] == "progress":
            self.setProgress(100.0 * float(event.get("fraction") or 0.0))
        self.eventReceived.emit(event)

    def finished(self, _result: bool) -> None:
        """GUI thread: hand the outcome to listeners."""
        self.completed.emit(self.outcome)
