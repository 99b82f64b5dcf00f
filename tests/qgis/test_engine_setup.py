"""Creating an engine environment: real venv + pip runs, on small requirements to stay fast."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest
from conftest import ROOT, wait_until, words
from qgis.core import QgsApplication

from segment_plugin.engine_setup import (
    CONSTRAINTS,
    ENGINE_KINDS,
    ENV_BASE_PYTHON,
    REQUIREMENTS,
    SetupError,
    SetupStep,
    create_engine_environment,
    find_base_python,
    setup_steps,
)
from segment_plugin.runner import ENV_PYTHON, venv_python
from segment_plugin.settings import PluginSettings

BASE = Path("/usr/bin/python3")  # what make setup builds from; has python3-venv


def small_steps(target: Path, requirement: str, tmp_path: Path) -> list[SetupStep]:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(requirement + "\n")
    return setup_steps(target, BASE, requirements=requirements, constraints=None)


def test_real_setup_installs_the_pinned_requirements_with_constraints(tmp_path):
    steps = setup_steps(tmp_path / "env", BASE)
    install = steps[1].command
    assert install[install.index("-r") + 1] == str(REQUIREMENTS)
    assert install[install.index("-c") + 1] == str(CONSTRAINTS)
    assert steps[2].command[-2:] == ["pip", "check"]
    for line in REQUIREMENTS.read_text().splitlines():
        if line and not line.startswith("#"):
            assert "==" in line, f"unpinned engine requirement: {line}"


def test_inference_only_setup_installs_no_tensorflow(tmp_path):
    """The light kind: ONNX Runtime and the geo stack, pinned, nothing of TensorFlow."""
    light, _ = ENGINE_KINDS["light"]
    install = setup_steps(tmp_path / "env", BASE, kind="light")[1].command
    assert install[install.index("-r") + 1] == str(light)
    assert install[install.index("-c") + 1] == str(CONSTRAINTS)
    pins = [x for x in light.read_text().splitlines() if x and not x.startswith("#")]
    assert all("==" in pin for pin in pins) and any(p.startswith("onnxruntime==") for p in pins)
    assert not any(p.startswith(("tensorflow", "keras")) for p in pins)
    full = {x for x in REQUIREMENTS.read_text().splitlines() if x and not x.startswith("#")}
    assert set(pins) <= full  # the same pins as the full engine's: one set of versions


def test_creates_a_working_environment(tmp_path):
    target = tmp_path / "env"
    lines, steps_seen = [], []
    python = create_engine_environment(
        target,
        BASE,
        on_line=lines.append,
        on_step=lambda i, n, label: steps_seen.append((i, n)),
        steps=small_steps(target, "six==1.17.0", tmp_path),
    )
    assert python == venv_python(target) and python.is_file()
    check = subprocess.run(
        [python, "-c", "import six; print(six.__version__)"], capture_output=True
    )
    assert check.stdout.decode().strip() == "1.17.0"
    assert steps_seen == [(0, 3), (1, 3), (2, 3), (3, 3)]
    assert any(line.startswith("$ ") for line in lines)


def test_failed_install_says_why_and_leaves_nothing(tmp_path):
    target = tmp_path / "env"
    with pytest.raises(SetupError) as err:
        create_engine_environment(
            target,
            BASE,
            on_line=lambda line: None,
            steps=small_steps(target, "segment-plugin-no-such-package==0.0.1", tmp_path),
        )
    assert "Installing the engine libraries" in str(err.value)
    assert "segment-plugin-no-such-package" in str(err.value)
    assert not target.exists()


def test_cancel_stops_a_silent_step_and_leaves_nothing(tmp_path):
    target = tmp_path / "env"
    steps = [
        SetupStep("Creating the virtual environment", [str(BASE), "-m", "venv", str(target)]),
        SetupStep("A long silent step", ["sleep", "120"]),
    ]
    started = threading.Event()
    with pytest.raises(SetupError, match="cancelled"):
        create_engine_environment(
            target,
            BASE,
            on_line=lambda line: started.set() if "sleep" in line else None,
            is_canceled=started.is_set,
            steps=steps,
        )
    assert not target.exists()


def test_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("user data")
    with pytest.raises(SetupError, match="not empty"):
        create_engine_environment(tmp_path, BASE, on_line=lambda line: None)
    assert (tmp_path / "keep.txt").exists()


def test_refuses_a_python_that_cannot_run(tmp_path):
    with pytest.raises(SetupError, match="cannot run"):
        create_engine_environment(tmp_path / "env", tmp_path / "nopython", on_line=print)


def test_base_python_override(monkeypatch):
    monkeypatch.setenv(ENV_BASE_PYTHON, "/opt/python3.11/bin/python3")
    assert find_base_python() == Path("/opt/python3.11/bin/python3")
    monkeypatch.delenv(ENV_BASE_PYTHON)
    assert find_base_python() is not None


def test_dialog_creates_an_environment_then_reports_it_incomplete(
    qgis_iface, tmp_path, monkeypatch
):
    """The dialog's button path: background task, log, progress, setting saved, re-check."""
    from segment_plugin.gui.dlg_engine import EngineDialog

    monkeypatch.delenv(ENV_PYTHON, raising=False)  # so the new setting is what gets used
    saved = PluginSettings.load()
    target = tmp_path / "engine-venv"
    dialog = EngineDialog(qgis_iface.mainWindow())
    dialog.show()
    try:
        task = dialog.start_setup(target, BASE, steps=small_steps(target, "six==1.17.0", tmp_path))
        assert dialog.cancel_button.isEnabled() and not dialog.create_button.isEnabled()
        wait_until(lambda: dialog.create_button.isEnabled(), timeout=180)  # setup finished
        log = dialog.log_view.toPlainText()
        assert "Engine environment ready" in log, log[-2000:]
        wait_until(lambda: dialog.last_result is not None, timeout=60)  # then the engine check
        assert task is not None
        assert PluginSettings.load().engine_python == str(venv_python(target))
        assert dialog.progress.value() == 100
        # this small environment lacks the engine libraries: the engine itself says what is missing
        assert dialog.last_result.ok
        status = words(dialog.status_view.toPlainText())
        # (no TensorFlow either: what it lacks is what an inference-only engine needs)
        assert "incomplete: missing" in status and "onnxruntime" in status
        assert "ONNX Runtime MISSING" in status and "TensorFlow not installed" in status
        shots = ROOT / "build" / "screenshots"
        shots.mkdir(parents=True, exist_ok=True)
        QgsApplication.processEvents()  # let the relayout run, as a user would see it
        dialog.grab().save(str(shots / "engine_dialog_after_setup.png"))
    finally:
        dialog.close()
        saved.save()
