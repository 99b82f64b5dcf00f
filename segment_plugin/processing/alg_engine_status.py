"""``segment_plugin:engine_status``: is the engine ready, with which Python, TF and devices."""

from __future__ import annotations

import json

from qgis.core import (
    QgsProcessingOutputBoolean,
    QgsProcessingOutputString,
)

from segment_plugin.processing.base import PluginAlgorithm
from segment_plugin.processing.engine_feedback import current_engine, run_engine_with_feedback


class EngineStatusAlgorithm(PluginAlgorithm):
    """Report the engine environment; never fails, so scripts can test READY."""

    GROUP = ("Engine", "engine")

    def name(self) -> str:  # noqa: D102
        return "engine_status"

    def displayName(self) -> str:  # noqa: D102, N802
        return "Engine status"

    def shortHelpString(self) -> str:  # noqa: D102, N802
        return (
            "Runs the segmentation engine (its own Python environment, outside QGIS) and reports "
            "whether it is ready: its Python, the TensorFlow and library versions and the compute "
            "devices TensorFlow sees (CPU/GPU). READY is false, with the reason in MESSAGE, when "
            "the engine environment is missing or incomplete: create it from Plugins > Segment "
            "Plugin > Engine settings, or point SEGMENT_PLUGIN_PYTHON at an existing one."
        )

    def initAlgorithm(self, config=None) -> None:  # noqa: D102, N802
        self.addOutput(QgsProcessingOutputBoolean("READY", "Engine ready"))
        self.addOutput(QgsProcessingOutputString("PYTHON", "Engine Python"))
        self.addOutput(QgsProcessingOutputString("TENSORFLOW", "TensorFlow version"))
        self.addOutput(QgsProcessingOutputString("DEVICES", "Devices"))
        self.addOutput(QgsProcessingOutputString("MESSAGE", "Message"))
        self.addOutput(QgsProcessingOutputString("REPORT", "Full report (JSON)"))

    def processAlgorithm(self, parameters, context, feedback) -> dict:  # noqa: D102, N802
        engine = current_engine()
        feedback.pushInfo(f"Engine: {engine.describe()}")
        outcome = run_engine_with_feedback(["info"], feedback, engine)
        report = outcome.data
        ready = bool(outcome.ok and report.get("ready"))
        if ready:
            message = "ready"
        elif outcome.ok:
            message = "missing libraries: " + ", ".join(report.get("missing", []))
        else:
            message = outcome.message
        feedback.pushInfo(f"Engine status: {message}")
        return {
            "READY": ready,
            "PYTHON": report.get("executable", str(engine.python or "")),
            "TENSORFLOW": (report.get("packages") or {}).get("tensorflow") or "",
            "DEVICES": ", ".join(d["type"] for d in report.get("devices", [])),
            "MESSAGE": message,
            "REPORT": json.dumps(report),
        }
