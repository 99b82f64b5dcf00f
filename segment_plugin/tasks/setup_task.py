"""Create the engine environment in the background (see :mod:`segment_plugin.engine_setup`)."""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from segment_plugin.engine_setup import SetupError, create_engine_environment


class SetupEngineTask(QgsTask):
    """venv + pinned pip install + pip check, with a streamed log, progress and cancel."""

    lineLogged = pyqtSignal(str)  # noqa: N815 - Qt naming
    stepStarted = pyqtSignal(str)  # noqa: N815
    completed = pyqtSignal(bool, str)  # ok, python path or error message (GUI thread)

    def __init__(self, target: Path, base_python: Path, steps=None) -> None:
        super().__init__("Creating the segment_plugin engine environment", QgsTask.CanCancel)
        self._target = Path(target)
        self._base_python = Path(base_python)
        self._steps = steps
        self._ok = False
        self._message = ""

    def run(self) -> bool:
        """Worker thread: build the environment; failures become a message."""
        try:
            python = create_engine_environment(
                self._target,
                self._base_python,
                on_line=self.lineLogged.emit,
                on_step=self._on_step,
                is_canceled=self.isCanceled,
                steps=self._steps,
            )
        except SetupError as exc:
            self._message = str(exc)
        except Exception as exc:  # noqa: BLE001 - a task must never raise into QGIS
            self._message = f"unexpected error: {type(exc).__name__}: {exc}"
        else:
            self._ok, self._message = True, str(python)
        return self._ok

    def _on_step(self, index: int, total: int, label: str) -> None:
        self.setProgress(100.0 * index / total)
        self.stepStarted.emit(label)

    def finished(self, _result: bool) -> None:
        """GUI thread: report the outcome."""
        self.completed.emit(self._ok, self._message)
