"""What this engine environment is: Python, library versions, compute devices.

The QGIS side shows this report in its status dialog (through ``segment-plugin info --progress
json``), so it must work in a half-installed environment too: a missing library is reported, not
raised.
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

from segment_plugin import plugin_files
from segment_plugin.engine.errors import DependencyError

#: Distributions the engine needs, by the name pip knows them.
REQUIRED_DISTRIBUTIONS = (
    "tensorflow",
    "keras",
    "numpy",
    "rasterio",
    "shapely",
    "geopandas",
    "pyogrio",
    "pyproj",
)

#: tensorflow is published under several distribution names; any one provides ``import tensorflow``.
_TENSORFLOW_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-macos", "tf-nightly")


def _distribution_version(name: str) -> str | None:
    names = _TENSORFLOW_DISTRIBUTIONS if name == "tensorflow" else (name,)
    for candidate in names:
        try:
            return metadata.version(candidate)
        except metadata.PackageNotFoundError:
            continue
    return None


def quiet_tensorflow_logs() -> None:
    """TensorFlow's C++ start-up chatter (oneDNN, CUDA probing) is noise for our users."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def tensorflow_devices() -> list[dict[str, str]]:
    """Physical devices TensorFlow sees, e.g. ``[{"type": "CPU", "name": "..."}]``."""
    quiet_tensorflow_logs()
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise DependencyError(f"TensorFlow cannot be imported in {sys.executable}: {exc}") from exc
    return [
        {"type": device.device_type, "name": device.name}
        for device in tf.config.list_physical_devices()
    ]


def engine_info(probe_devices: bool = True) -> dict[str, Any]:
    """Report the engine environment; ``probe_devices`` imports TensorFlow (a few seconds)."""
    packages = {name: _distribution_version(name) for name in REQUIRED_DISTRIBUTIONS}
    missing = sorted(name for name, found in packages.items() if found is None)
    report: dict[str, Any] = {
        "engine_version": plugin_files.version(),
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "packages": packages,
        "missing": missing,
        "devices": [],
        "gpu": False,
        "device_error": None,
    }
    if probe_devices and packages["tensorflow"] is not None:
        try:
            report["devices"] = tensorflow_devices()
        except DependencyError as exc:
            report["device_error"] = str(exc)
        report["gpu"] = any(d["type"] == "GPU" for d in report["devices"])
    report["ready"] = not missing and report["device_error"] is None
    return report


def format_info(report: dict[str, Any]) -> str:
    """The report as lines for a terminal."""
    lines = [
        f"segment_plugin engine {report['engine_version']}",
        f"python     {report['python']} ({report['executable']})",
    ]
    for name, version in report["packages"].items():
        lines.append(f"{name:<10} {version or 'MISSING'}")
    devices = ", ".join(d["type"] for d in report["devices"]) or "none probed"
    lines.append(f"devices    {devices}")
    if report["device_error"]:
        lines.append(f"device error: {report['device_error']}")
    lines.append("ready" if report["ready"] else "NOT ready: install the missing packages")
    return "\n".join(lines)
