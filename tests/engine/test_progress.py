"""Reporter helpers: values that JSON cannot hold are made safe, progress is clamped."""

from __future__ import annotations

import io
import math

import numpy as np
from conftest import Recorder

from segment_plugin.engine.progress import TextReporter, _jsonable


def test_progress_is_clamped_to_unit_interval():
    rec = Recorder()
    rec.progress(1.7)
    rec.progress(-0.2, "x")
    assert [f["fraction"] for _, f in rec.events] == [1.0, 0.0]


def test_jsonable_handles_numpy_and_nan():
    value = {"iou": np.float32(0.5), "n": np.int64(3), "bad": math.nan, "list": (np.float64(1),)}
    assert _jsonable(value) == {"iou": 0.5, "n": 3, "bad": None, "list": [1.0]}


def test_text_reporter_prints_logs_errors_and_metrics():
    stream = io.StringIO()
    reporter = TextReporter(stream)
    reporter.log("hello")
    reporter.log("careful", level="warning")
    reporter.metrics(loss=0.123456, epoch=2)
    reporter.emit("error", code="input_error", message="bad band")
    reporter.progress(1.0, "done")
    lines = stream.getvalue().splitlines()
    assert lines == [
        "hello",
        "warning: careful",
        "loss=0.1235, epoch=2",
        "error: bad band",
        "[100.0 %] done",
    ]
