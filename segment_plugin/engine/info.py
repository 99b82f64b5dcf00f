"""What this engine environment is: Python, library versions, compute devices.

The QGIS side shows this report in its status dialog (through ``segment-plugin info --progress
json``), so it must work in a half-installed environment too: a missing library is reported, not
raised.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from importlib import metadata
from typing import Any

from segment_plugin import plugin_files
from segment_plugin.engine.errors import DependencyError

#: Distributions every engine needs, by the name pip knows them (the inference-only engine has
#: just these: it segments, vectorises and evaluates with ONNX models).
INFERENCE_DISTRIBUTIONS = (
    "onnxruntime",
    "numpy",
    "rasterio",
    "shapely",
    "geopandas",
    "pyogrio",
    "pyproj",
    "distributed",
)
#: ... and what the full engine adds: Keras models, training, ONNX export.
FULL_DISTRIBUTIONS = ("tensorflow", "keras", "onnx", "tf2onnx")
FULL_ENGINE_HINT = (
    "set up the full engine (the engine dialog's 'Full' choice, or make setup ENGINE_KIND=full)"
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


def engine_kind(packages: dict[str, str | None]) -> str:
    """``inference-only`` (TensorFlow and Keras not importable), ``full`` or ``incomplete``."""
    if not all(_importable(module) for module in ("tensorflow", "keras")):
        return "inference-only"
    return "full" if all(packages[name] for name in FULL_DISTRIBUTIONS) else "incomplete"


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def require_full_engine(what: str) -> None:
    """Refuse ``what`` (training, export) in an inference-only engine, saying how to get one.

    Keras on another backend (KERAS_BACKEND=torch or jax, as on a lent GPU machine) counts.
    """
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if not all(_importable(name) for name in ("keras", backend)):
        raise DependencyError(
            f"{what} needs the full engine (TensorFlow and Keras); this engine is "
            f"inference-only: {FULL_ENGINE_HINT}"
        )


def engine_info(probe_devices: bool = True) -> dict[str, Any]:
    """Report the engine environment; ``probe_devices`` imports TensorFlow (a few seconds)."""
    names = INFERENCE_DISTRIBUTIONS + FULL_DISTRIBUTIONS
    packages = {name: _distribution_version(name) for name in names}
    kind = engine_kind(packages)
    needed = INFERENCE_DISTRIBUTIONS if kind == "inference-only" else names
    missing = sorted(name for name in needed if packages[name] is None)
    report: dict[str, Any] = {
        "kind": kind,
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
    if probe_devices and kind != "inference-only":
        try:
            report["devices"] = tensorflow_devices()
        except DependencyError as exc:
            report["device_error"] = str(exc)
    elif probe_devices and packages["onnxruntime"] is not None:
        import onnxruntime

        report["devices"] = [
            {"type": "GPU" if "CUDA" in name else "CPU", "name": name}
            for name in onnxruntime.get_available_providers()
            if name in ("CUDAExecutionProvider", "CPUExecutionProvider")
        ]
    report["gpu"] = any(d["type"] == "GPU" for d in report["devices"])
    report["ready"] = not missing and report["device_error"] is None
    return report


def format_info(report: dict[str, Any]) -> str:
    """The report as lines for a terminal."""
    lines = [
        f"segment_plugin engine {report['engine_version']} ({report['kind']})",
        f"python     {report['python']} ({report['executable']})",
    ]
    for name, version in report["packages"].items():
        absent = "not installed" if report["kind"] == "inference-only" else "MISSING"
        lines.append(f"{name:<11} {version or absent}")
    devices = ", ".join(d["type"] for d in report["devices"]) or "none probed"
    lines.append(f"devices    {devices}")
    if report["device_error"]:
        lines.append(f"device error: {report['device_error']}")
    dask = report.get("dask")
    if dask:
        lines.append(f"dask       {dask['scheduler']}: {dask['error'] or dask['summary']}")
    if not report["ready"]:
        lines.append("NOT ready: install the missing packages")
    elif report["kind"] == "inference-only":
        lines.append(f"ready to segment with ONNX models; training: {FULL_ENGINE_HINT}")
    else:
        lines.append("ready")
    return "\n".join(lines)
