"""Run the engine from a Processing algorithm: JSON events → feedback, isCanceled → terminate."""

from __future__ import annotations

from collections.abc import Sequence

from qgis.core import QgsProcessingFeedback

from segment_plugin.runner import EngineLocation, EngineResult, run_engine
from segment_plugin.settings import PluginSettings


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
        elif kind == "error":
            feedback.reportError(event.get("message", ""))

    return run_engine(
        args,
        engine.python,
        on_event=on_event,
        is_canceled=feedback.isCanceled,
        on_output=feedback.pushDebugInfo,
    )
