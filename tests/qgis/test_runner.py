"""The QGIS side's engine protocol against the real engine subprocess."""

from __future__ import annotations

import os
import sys
import time

import pytest

from segment_plugin import plugin_files
from segment_plugin.runner import (
    ENV_PYTHON,
    engine_environment,
    locate_engine,
    run_engine,
    stream_process,
    venv_python,
)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_engine_status_round_trips(engine_python):
    events = []
    result = run_engine(["info"], engine_python, on_event=events.append)
    assert result.ok, result.message
    assert [e["event"] for e in events][0] == "start"
    assert events[-1]["event"] == "end"
    assert result.data["ready"] is True
    assert result.data["engine_version"] == plugin_files.version()
    assert result.data["packages"]["tensorflow"].startswith("2.")
    assert {d["type"] for d in result.data["devices"]} >= {"CPU"}
    # the engine ran in its own environment, not in QGIS's Python
    assert result.data["executable"] != sys.executable


def test_missing_engine_gives_a_clear_status(missing_engine):
    engine = locate_engine()
    assert not engine.exists
    assert "NOT FOUND" in engine.describe() and ENV_PYTHON in engine.describe()
    result = run_engine(["info"], missing_engine)
    assert result.status == "missing"
    assert str(missing_engine) in result.message and "No such file" in result.message


def test_discovery_order(monkeypatch, tmp_path, engine_python):
    monkeypatch.setenv(ENV_PYTHON, "/env/python")
    assert str(locate_engine("/setting/python").python) == "/env/python"
    monkeypatch.delenv(ENV_PYTHON)
    assert str(locate_engine("/setting/python").python) == "/setting/python"
    assert locate_engine("").source == "default .venv next to the plugin"
    assert locate_engine("").python == venv_python(plugin_files.PACKAGE_DIR.parent / ".venv")


def test_engine_environment_drops_qgis_python_and_proj(monkeypatch):
    monkeypatch.setenv("PYTHONHOME", "/usr")
    monkeypatch.setenv("PROJ_LIB", "/usr/share/proj")
    env = engine_environment()
    assert "PYTHONHOME" not in env and "PROJ_LIB" not in env
    assert env["PYTHONPATH"] == str(plugin_files.PACKAGE_DIR.parent)


def test_cancel_terminates_the_engine_promptly(engine_python):
    """Cancel during TensorFlow's import: the engine process is gone, status 'cancelled'."""
    pids = []

    def on_event(event):
        if event["event"] == "start":
            pids.append(event["pid"])

    started = time.monotonic()
    result = run_engine(["info"], engine_python, on_event=on_event, is_canceled=lambda: bool(pids))
    assert result.status == "cancelled"
    assert time.monotonic() - started < 15
    assert pids and not pid_alive(pids[0])


def test_cancel_reaches_grandchildren():
    """The whole process group goes: nothing the engine started may outlive a cancel."""
    lines = []
    command = ["/bin/sh", "-c", "sleep 300 & echo $!; wait"]
    code, canceled = stream_process(
        command, lambda kind, line: lines.append(line), lambda: bool(lines)
    )
    assert canceled and code != 0
    grandchild = int(lines[0])
    deadline = time.monotonic() + 5
    while pid_alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not pid_alive(grandchild)


def test_engine_error_keeps_the_message(engine_python):
    result = run_engine(["no-such-command"], engine_python)
    assert result.status == "error" and result.exit_code == 2
    assert "invalid choice" in result.message


@pytest.mark.parametrize("bad", ["", "{not json", '{"no_event": 1}'])
def test_non_protocol_lines_go_to_output(bad, tmp_path):
    script = tmp_path / "fake_python"
    script.write_text(f'#!/bin/sh\necho \'{bad}\'\necho \'{{"event": "end", "status": "ok"}}\'\n')
    script.chmod(0o755)
    output, events = [], []
    result = run_engine(["info"], script, on_event=events.append, on_output=output.append)
    assert result.ok
    assert [e["event"] for e in events] == ["end"]
    assert output == ([bad] if bad else [])


@pytest.mark.parametrize("signal_name", ["SEGV", "KILL"])
def test_an_engine_that_dies_is_reported_with_its_signal_and_last_lines(signal_name, tmp_path):
    """A crash in a native library or the OOM killer: named as such, never a bare exit code."""
    script = tmp_path / "dying_python"
    lines = "".join(f"echo 'step {n}' >&2\n" for n in range(8))
    script.write_text(f"#!/bin/sh\n{lines}kill -{signal_name} $$\n")
    script.chmod(0o755)
    result = run_engine(["segment"], script)
    number = {"SEGV": 11, "KILL": 9}[signal_name]
    assert result.status == "error" and result.exit_code == -number
    head, *quoted = result.message.splitlines()
    assert head == (
        f"the engine stopped unexpectedly (signal {number}, SIG{signal_name}); its last lines:"
    )
    assert quoted == [f"step {n}" for n in range(3, 8)]
