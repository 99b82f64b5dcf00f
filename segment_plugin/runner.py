"""QGIS side of the engine protocol: find the engine, run it, read its JSON lines, cancel it.

Standard library only, so it works (and is tested) without QGIS and never drags an engine
library into the QGIS process. Every QGIS entry point (dialogs, tasks, Processing algorithms)
runs the engine through :func:`run_engine`.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from segment_plugin.plugin_files import PACKAGE_DIR

ENV_PYTHON = "SEGMENT_PLUGIN_PYTHON"
#: Variables QGIS sets for its own Python/GDAL/PROJ; the engine's wheels bring their own.
_FOREIGN_ENV = (
    "PYTHONHOME",
    "PYTHONPATH",
    "PYTHONSTARTUP",
    "GDAL_DATA",
    "GDAL_DRIVER_PATH",
    "PROJ_LIB",
    "PROJ_DATA",
)
_TERMINATE_GRACE_S = 5.0
#: stderr lines quoted when the engine dies
_DIED_LINES = 5

Event = dict[str, Any]


def venv_python(venv_dir: str | os.PathLike[str]) -> Path:
    """The interpreter inside a virtual environment folder."""
    scripts = "Scripts/python.exe" if sys.platform == "win32" else "bin/python"
    return Path(venv_dir) / scripts


def default_venv_dir() -> Path:
    """``.venv`` next to the package: where ``make setup`` puts it in a source checkout."""
    return PACKAGE_DIR.parent / ".venv"


@dataclass(frozen=True)
class EngineLocation:
    """Which Python runs the engine, and why that one."""

    python: Path | None
    source: str

    @property
    def exists(self) -> bool:
        """Whether the interpreter file is there."""
        return self.python is not None and self.python.is_file()

    def describe(self) -> str:
        """One line for the user."""
        if self.python is None:
            return "no engine environment configured"
        state = "found" if self.exists else "NOT FOUND"
        return f"{self.python} ({self.source}, {state})"


def locate_engine(setting_python: str | None = None) -> EngineLocation:
    """Pick the engine Python: the environment variable, else the plugin setting, else ``.venv``.

    The first one that is *configured* wins even if its file is missing, so a wrong setting is
    reported as wrong instead of silently replaced by another environment.
    """
    from_env = os.environ.get(ENV_PYTHON, "").strip()
    if from_env:
        return EngineLocation(Path(from_env), f"environment variable {ENV_PYTHON}")
    if setting_python and setting_python.strip():
        return EngineLocation(Path(setting_python.strip()), "plugin setting")
    default = venv_python(default_venv_dir())
    if default.is_file():
        return EngineLocation(default, "default .venv next to the plugin")
    return EngineLocation(None, "none")


def clean_environment() -> dict[str, str]:
    """Ours, minus QGIS's Python/GDAL/PROJ settings: for any Python that is not QGIS's."""
    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV}
    env["PYTHONNOUSERSITE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def engine_environment() -> dict[str, str]:
    """The engine's environment: clean, with the plugin's own engine code importable."""
    env = clean_environment()
    env["PYTHONPATH"] = str(PACKAGE_DIR.parent)  # engine code of the same version as the plugin
    return env


@dataclass
class EngineResult:
    """How an engine run ended."""

    status: str  # "ok" | "error" | "cancelled" | "missing"
    exit_code: int | None
    data: dict[str, Any] = field(default_factory=dict)
    message: str = ""
    stderr_tail: str = ""

    @property
    def ok(self) -> bool:
        """True when the engine finished its command successfully."""
        return self.status == "ok"


def process_group_options() -> dict[str, Any]:
    """Start the engine in its own process group, so cancel reaches its children too."""
    if sys.platform == "win32":
        flags = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
        return {"creationflags": flags}
    return {"start_new_session": True}


def terminate_process_group(process: subprocess.Popen[str]) -> None:
    """Stop the engine and everything it started: SIGTERM, then SIGKILL after a grace period."""
    if process.poll() is not None:
        return
    if sys.platform == "win32":
        process.terminate()
    else:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(_TERMINATE_GRACE_S)
    except subprocess.TimeoutExpired:
        if sys.platform == "win32":
            process.kill()
        else:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _pump(stream: Any, kind: str, sink: queue.Queue[tuple[str, str]]) -> None:
    for line in stream:
        sink.put((kind, line.rstrip("\r\n")))
    stream.close()


def stream_process(
    command: Sequence[str],
    on_line: Callable[[str, str], None],
    is_canceled: Callable[[], bool] = lambda: False,
    env: dict[str, str] | None = None,
) -> tuple[int, bool]:
    """Run ``command`` in its own process group, feeding each line to ``on_line(kind, line)``.

    ``kind`` is ``"out"`` or ``"err"``; lines are delivered in the calling thread. ``is_canceled``
    is polled about ten times a second, also while the process prints nothing; once true, the
    whole process group is terminated. ``env`` defaults to :func:`clean_environment`. Returns
    ``(exit_code, canceled)``; raises OSError when the program cannot be started.
    """
    process = subprocess.Popen(
        list(command),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
        env=clean_environment() if env is None else env,
        **process_group_options(),
    )
    lines: queue.Queue[tuple[str, str]] = queue.Queue()
    readers = [
        threading.Thread(target=_pump, args=(process.stdout, "out", lines), daemon=True),
        threading.Thread(target=_pump, args=(process.stderr, "err", lines), daemon=True),
    ]
    for reader in readers:
        reader.start()
    canceled = False
    try:
        while True:
            if not canceled and is_canceled():
                canceled = True
                terminate_process_group(process)
            try:
                kind, line = lines.get(timeout=0.1)
            except queue.Empty:
                if not any(reader.is_alive() for reader in readers) and lines.empty():
                    break
                continue
            on_line(kind, line)
    finally:
        terminate_process_group(process)  # no-op when it already exited; never leave a stray one
    return process.wait(), canceled


def run_engine(
    args: Sequence[str],
    python: str | os.PathLike[str],
    on_event: Callable[[Event], None] | None = None,
    is_canceled: Callable[[], bool] = lambda: False,
    on_output: Callable[[str], None] | None = None,
) -> EngineResult:
    """Run ``python -m segment_plugin.engine ARGS --progress json`` and wait for it.

    ``on_event`` receives every protocol event (in the calling thread); ``is_canceled`` cancels
    the run (see :func:`stream_process`); ``on_output`` receives stdout lines that are not
    protocol events and stderr lines (for a log panel). Never raises for engine failures: the
    outcome is in the returned :class:`EngineResult`.
    """
    command = [os.fspath(python), "-m", "segment_plugin.engine", *args, "--progress", "json"]
    result = EngineResult("error", None)
    stderr_tail: deque[str] = deque(maxlen=40)

    def on_line(kind: str, line: str) -> None:
        event = _parse_event(line) if kind == "out" else None
        if event is not None:
            _record(event, result)
            if on_event is not None:
                on_event(event)
            return
        if kind == "err":
            stderr_tail.append(line)
        if on_output is not None and line:
            on_output(line)

    try:
        result.exit_code, canceled = stream_process(
            command, on_line, is_canceled, env=engine_environment()
        )
    except OSError as exc:
        return EngineResult(
            "missing", None, message=f"cannot start the engine with {python}: {exc.strerror}"
        )
    result.stderr_tail = "\n".join(stderr_tail)
    if canceled:
        result.status, result.message = "cancelled", "cancelled by the user"
    elif result.exit_code != 0 or result.status != "ok":
        result.status = "error"
        if result.exit_code is not None and result.exit_code < 0:  # killed, crashed: say so
            result.message = _died_message(-result.exit_code, stderr_tail)
        elif not result.message:
            last = stderr_tail[-1] if stderr_tail else "no output"
            result.message = f"the engine stopped with exit code {result.exit_code}: {last}"
    return result


def _died_message(number: int, stderr_tail: Sequence[str]) -> str:
    """An engine killed by a signal (out of memory, a crash in a native library, kill -9)."""
    try:
        name = f", {signal.Signals(number).name}"
    except ValueError:
        name = ""
    last = [line for line in stderr_tail if line.strip()][-_DIED_LINES:]
    said = "its last lines:\n" + "\n".join(last) if last else "it printed nothing"
    return f"the engine stopped unexpectedly (signal {number}{name}); {said}"


def _parse_event(line: str | None) -> Event | None:
    if not line or not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


def _record(event: Event, result: EngineResult) -> None:
    kind = event["event"]
    if kind == "result":
        result.data = event.get("data") or {}
    elif kind == "error":
        result.message = event.get("message", "")
    elif kind == "end":
        result.status = event.get("status", "error")
