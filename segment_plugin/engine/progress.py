"""Progress reporting and cancellation: plain callables inside, adapted at the edges.

Library code receives a :class:`Reporter` and calls ``progress``/``log``/``metrics``; it never knows
whether a human terminal, the QGIS side (JSON lines) or a test is listening. The JSON-lines protocol
is what the QGIS side parses (``segment_plugin/runner.py``); every line is one JSON object with an
``event`` key:

``start``    ``{"protocol": 1, "command": ..., "version": ..., "pid": int}`` (always first)
``progress`` ``{"fraction": 0..1, "message": str | null, ...}`` (+ ``tiles_per_s``, ``eta_s``)
``log``      ``{"level": "info" | "warning", "message": str}``
``metrics``  ``{"values": {...}}`` (training and benchmarks)
``result``   ``{"data": {...}}`` (paths written, reports)
``error``    ``{"code": str, "message": str}``
``end``      ``{"status": "ok" | "error" | "cancelled", "exit_code": int}`` (always last)
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from segment_plugin.engine.errors import CancelledError

PROTOCOL_VERSION = 1


class CancelToken:
    """Set when the job should stop (SIGTERM from QGIS's Cancel, Ctrl+C, a dialog's button).

    Long loops call :meth:`check` at safe points (between batches) inside :meth:`checkpoints`;
    outside such sections a signal raises :class:`CancelledError` at once (see
    :func:`cancel_on_signals`), so slow start-up work such as importing TensorFlow stops too.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._checkpoint_depth = 0

    def set(self) -> None:
        """Ask the job to stop."""
        self._event.set()

    def is_set(self) -> bool:
        """Whether a stop was asked for."""
        return self._event.is_set()

    def check(self) -> None:
        """Raise CancelledError if a stop was asked for."""
        if self._event.is_set():
            raise CancelledError("cancelled")

    @property
    def at_checkpoint_only(self) -> bool:
        """Whether the running code checks the token itself."""
        return self._checkpoint_depth > 0

    @contextmanager
    def checkpoints(self) -> Iterator[None]:
        """Within this block, signals only set the token; the code calls :meth:`check`."""
        self._checkpoint_depth += 1
        try:
            yield
        finally:
            self._checkpoint_depth -= 1
        self.check()


class Reporter:
    """Receives engine events and carries the job's cancel token. The base discards events."""

    def __init__(self) -> None:
        self.cancel = CancelToken()

    def emit(self, event: str, **fields: Any) -> None:
        """Deliver one event; subclasses render it."""

    def progress(self, fraction: float, message: str | None = None, **extra: Any) -> None:
        """Report overall progress in [0, 1]; ``extra`` adds fields such as ``eta_s``."""
        fraction = round(min(max(fraction, 0.0), 1.0), 4)
        self.emit("progress", fraction=fraction, message=message, **extra)

    def log(self, message: str, level: str = "info") -> None:
        """Report a human-readable message."""
        self.emit("log", level=level, message=message)

    def metrics(self, **values: Any) -> None:
        """Report measured values (loss, IoU, throughput...)."""
        self.emit("metrics", values=values)

    def result(self, **data: Any) -> None:
        """Report the outcome of the command (paths written, report)."""
        self.emit("result", data=data)


def _jsonable(value: Any) -> Any:
    """NaN/inf are not JSON; numpy scalars are not json-serialisable."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return _jsonable(value.item())
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


class ScaledReporter(Reporter):
    """Passes events on, mapping progress 0..1 onto ``low..high`` of the parent's (job phases)."""

    def __init__(self, parent: Reporter, low: float, high: float) -> None:
        super().__init__()
        self.parent = parent
        self.cancel = parent.cancel
        self.low, self.high = low, high

    def emit(self, event: str, **fields: Any) -> None:
        """Forward the event; progress fractions are rescaled."""
        if event == "progress":
            fields["fraction"] = round(self.low + (self.high - self.low) * fields["fraction"], 4)
        self.parent.emit(event, **fields)


class JsonLinesReporter(Reporter):
    """Writes one JSON object per line to a private copy of stdout.

    The process's fd 1 is then pointed at stderr, so that anything else that prints to stdout
    (TensorFlow, C libraries, a stray ``print``) cannot corrupt the protocol stream.
    """

    def __init__(self) -> None:
        super().__init__()
        sys.stdout.flush()
        protocol_fd = os.dup(1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        self._out: TextIO = os.fdopen(protocol_fd, "w", encoding="utf-8", buffering=1)

    def emit(self, event: str, **fields: Any) -> None:
        """Write the event as one line and flush it at once."""
        line = json.dumps({"event": event, **_jsonable(fields)}, ensure_ascii=False)
        self._out.write(line + "\n")
        self._out.flush()


class TextReporter(Reporter):
    """Human output for the terminal: progress and logs on stderr, the result on stdout."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__()
        self._stream = stream or sys.stderr
        self._last_progress = 0.0

    def emit(self, event: str, **fields: Any) -> None:
        """Print the event for a person reading a terminal."""
        if event == "progress":
            now = time.monotonic()
            if now - self._last_progress < 1.0 and fields["fraction"] < 1.0:
                return  # one line a second is plenty for a terminal
            self._last_progress = now
            message = f" {fields['message']}" if fields.get("message") else ""
            print(f"[{fields['fraction'] * 100:5.1f} %]{message}", file=self._stream)
        elif event == "log":
            prefix = "warning: " if fields["level"] == "warning" else ""
            print(f"{prefix}{fields['message']}", file=self._stream)
        elif event == "metrics":
            text = ", ".join(f"{k}={_format_value(v)}" for k, v in fields["values"].items())
            print(text, file=self._stream)
        elif event == "error":
            print(f"error: {fields['message']}", file=self._stream)


def _format_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def cancel_on_signals(token: CancelToken) -> None:
    """SIGTERM/SIGINT set ``token``; outside checkpoint sections they also raise at once.

    The QGIS side cancels a job by sending SIGTERM to the engine's process group. Raising from a
    signal handler inside library code (TensorFlow wraps exceptions raised in its calls) is not
    safe, hence checkpoints in the long loops.
    """

    def handler(signum: int, _frame: Any) -> None:
        token.set()
        if not token.at_checkpoint_only:
            raise CancelledError(f"cancelled by signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
