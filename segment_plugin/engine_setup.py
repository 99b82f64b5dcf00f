"""Create the engine's virtual environment: ``python -m venv`` + pinned ``pip install``.

Runs on the QGIS side (in a background task) but needs nothing from QGIS, so it is plain
standard-library code driving subprocesses. A failed or cancelled setup removes the folder it
created: no half-installed environment is ever left behind to be picked up later.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from segment_plugin.plugin_files import PACKAGE_DIR
from segment_plugin.runner import clean_environment, stream_process, venv_python

REQUIREMENTS = PACKAGE_DIR / "engine" / "requirements.txt"
CONSTRAINTS = PACKAGE_DIR / "engine" / "constraints.txt"
#: What each kind of engine installs, and what it weighs (measured: tests/bench/engine_sizes.py).
ENGINE_KINDS = {
    "full": (REQUIREMENTS, "segment and fine-tune; TensorFlow, about 2.1 GB"),
    "light": (
        PACKAGE_DIR / "engine" / "requirements-light.txt",
        "segment only, with ONNX models; no TensorFlow, about 0.5 GB",
    ),
}
ENV_BASE_PYTHON = "SEGMENT_PLUGIN_BASE_PYTHON"
#: Python versions the pinned TensorFlow publishes wheels for.
SUPPORTED_PYTHONS = ((3, 10), (3, 11), (3, 12), (3, 13))


class SetupError(Exception):
    """Creating the environment failed; the message says why and what to do."""


def find_base_python() -> Path | None:
    """The Python to build the environment from.

    ``SEGMENT_PLUGIN_BASE_PYTHON`` if set; on Windows QGIS's own python.exe (OSGeo4W ships one),
    elsewhere ``python3`` on the PATH. QGIS's ``sys.executable`` is the QGIS binary, not Python.
    """
    override = os.environ.get(ENV_BASE_PYTHON, "").strip()
    if override:
        return Path(override)
    if sys.platform == "win32":
        candidate = Path(sys.exec_prefix) / "python.exe"
        return candidate if candidate.is_file() else None
    found = shutil.which("python3")
    return Path(found) if found else None


@dataclass(frozen=True)
class SetupStep:
    """One command of the setup and what it means for the user."""

    label: str
    command: list[str]


def setup_steps(
    target: Path,
    base_python: Path,
    requirements: Path | None = None,
    constraints: Path | None = CONSTRAINTS,
    kind: str = "full",
) -> list[SetupStep]:
    """The commands that build an engine environment of ``kind`` in ``target``."""
    requirements = requirements or ENGINE_KINDS[kind][0]
    python = str(venv_python(target))
    install = [
        python,
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "-r",
        str(requirements),
    ]
    if constraints is not None:
        install += ["-c", str(constraints)]
    return [
        SetupStep(
            "Creating the virtual environment", [str(base_python), "-m", "venv", str(target)]
        ),
        SetupStep(f"Installing the engine libraries ({ENGINE_KINDS[kind][1]})", install),
        SetupStep("Checking the installed libraries", [python, "-m", "pip", "check"]),
    ]


def check_base_python(base_python: Path) -> str:
    """Return the base Python's version, or raise SetupError if TensorFlow cannot run on it."""
    try:
        out = subprocess.run(
            [str(base_python), "-c", "import sys, venv; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_environment(),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SetupError(f"cannot run {base_python}: {exc}") from exc
    if out.returncode != 0:
        raise SetupError(
            f"{base_python} cannot create virtual environments (is python3-venv installed?): "
            f"{out.stderr.strip().splitlines()[-1] if out.stderr.strip() else 'no output'}"
        )
    version = out.stdout.strip()
    if tuple(int(p) for p in version.split(".")) not in SUPPORTED_PYTHONS:
        supported = ", ".join(f"{major}.{minor}" for major, minor in SUPPORTED_PYTHONS)
        raise SetupError(
            f"{base_python} is Python {version}; the engine needs one of {supported}. "
            f"Set {ENV_BASE_PYTHON} to a suitable python."
        )
    return version


def create_engine_environment(
    target: Path,
    base_python: Path,
    on_line: Callable[[str], None],
    on_step: Callable[[int, int, str], None] = lambda index, total, label: None,
    is_canceled: Callable[[], bool] = lambda: False,
    steps: Sequence[SetupStep] | None = None,
) -> Path:
    """Build the environment and return its Python; raise SetupError (folder removed) on failure."""
    target = Path(target)
    if target.exists() and any(target.iterdir()):
        raise SetupError(f"{target} exists and is not empty; choose a new folder")
    check_base_python(base_python)
    steps = list(steps) if steps is not None else setup_steps(target, base_python)
    try:
        for index, step in enumerate(steps):
            on_step(index, len(steps), step.label)
            on_line("$ " + " ".join(step.command))
            _run_step(step, on_line, is_canceled)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    on_step(len(steps), len(steps), "Done")
    return venv_python(target)


def _run_step(step: SetupStep, on_line: Callable[[str], None], is_canceled: Callable[[], bool]):
    last_lines: deque[str] = deque(maxlen=5)

    def forward(_kind: str, line: str) -> None:
        on_line(line)
        if line.strip():
            last_lines.append(line.strip())

    try:
        exit_code, canceled = stream_process(step.command, forward, is_canceled)
    except OSError as exc:
        raise SetupError(f"{step.label} failed: cannot run {step.command[0]}: {exc}") from exc
    if canceled:
        raise SetupError("cancelled by the user; the partial environment was removed")
    if exit_code != 0:
        detail = " | ".join(last_lines) or "no output"
        raise SetupError(f"{step.label} failed (exit code {exit_code}): {detail}")
