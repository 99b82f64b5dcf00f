"""The device choice (auto/cpu/gpu) as the engine sees it, shared by the dialogs.

The engine's ``info`` runs in a background task; when it answers, "auto" shows the device it
will use and "gpu" is disabled where TensorFlow sees none, so nobody picks a device that fails.
"""

from __future__ import annotations

from collections.abc import Callable

from qgis.core import QgsApplication
from qgis.PyQt.QtWidgets import QComboBox

from segment_plugin.settings import PluginSettings
from segment_plugin.tasks.engine_task import EngineCommandTask


def request_devices(on_done: Callable[[object], None]) -> EngineCommandTask:
    """Start ``info`` in the task manager; ``on_done(outcome)`` runs in the GUI thread."""
    task = EngineCommandTask(
        "Segment Plugin: devices", ["info"], PluginSettings.load().engine().python
    )
    task.completed.connect(on_done)
    QgsApplication.taskManager().addTask(task)
    return task


def show_devices(combo: QComboBox, outcome) -> bool:
    """Label the auto/cpu/gpu items of ``combo`` from the engine's answer; False if it failed."""
    if not outcome.ok:
        return False
    gpu = bool(outcome.data.get("gpu"))
    combo.setItemText(0, f"auto ({'GPU' if gpu else 'CPU'})")
    combo.setItemText(2, "gpu" if gpu else "gpu (none found)")
    combo.model().item(2).setEnabled(gpu)
    return True
