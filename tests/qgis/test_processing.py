"""segment_plugin:engine_status through Processing, as the toolbox and scripts run it."""

from __future__ import annotations

import json

import pytest
from qgis.core import QgsApplication, QgsProcessingContext, QgsProcessingFeedback

from segment_plugin.processing.provider import SegmentProvider


@pytest.fixture(scope="module")
def algorithm(qgis_app):
    provider = SegmentProvider()
    QgsApplication.processingRegistry().addProvider(provider)
    yield QgsApplication.processingRegistry().algorithmById("segment_plugin:engine_status")
    QgsApplication.processingRegistry().removeProvider(provider)


class RecordingFeedback(QgsProcessingFeedback):
    def __init__(self):
        super().__init__()
        self.infos = []

    def pushInfo(self, info):  # noqa: N802
        self.infos.append(info)


def run(algorithm):
    feedback = RecordingFeedback()
    results, ok = algorithm.run({}, QgsProcessingContext(), feedback)
    assert ok
    return results, feedback


def test_engine_status_reports_ready(algorithm, engine_python):
    results, feedback = run(algorithm)
    assert results["READY"] is True
    assert results["PYTHON"] == str(engine_python)
    assert results["TENSORFLOW"].startswith("2.")
    assert "CPU" in results["DEVICES"]
    assert json.loads(results["REPORT"])["missing"] == []
    assert any("Engine status: ready" in line for line in feedback.infos)


def test_engine_status_without_engine_says_why(algorithm, missing_engine):
    results, _ = run(algorithm)
    assert results["READY"] is False
    assert str(missing_engine) in results["MESSAGE"]


def test_help_text_explains_setup(algorithm):
    assert "Engine settings" in algorithm.shortHelpString()
