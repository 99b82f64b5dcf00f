"""Engine fixtures: a tiny real Keras model package and GeoTIFFs written by code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import rasterio  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402

from segment_plugin.engine.models.package import (  # noqa: E402
    ClassInfo,
    ModelCard,
    Normalization,
    save_package,
)
from segment_plugin.engine.progress import Reporter  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
RASTERS = SHARED / "rasters"
DEMO = RASTERS / "demo_nl_gorinchem_rgb_25cm.tif"

LANDCOVER_CLASSES = (
    ClassInfo(0, "background", "#F5F5DC"),
    ClassInfo(1, "building", "#D7191C"),
    ClassInfo(2, "woodland", "#1A9641"),
    ClassInfo(3, "water", "#2B83BA"),
    ClassInfo(4, "road", "#FDAE61"),
)
# card class weights that, undone at inference, all but rule out every class except building
BUILDING_ONLY_WEIGHTS = (1e4, 1.0, 1e4, 1e4, 1e4)


def assert_weights_only(keras_file: Path) -> None:
    """A saved ``model.keras`` holds the layers' weights and no optimizer state."""
    import io
    import zipfile

    import h5py

    with zipfile.ZipFile(keras_file) as archive:
        with h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as weights:
            assert "layers" in weights and "optimizer" not in weights


def single_pass_classes(raster: Path, model: str | Path) -> np.ndarray:
    """The model on the whole RGB image at once, its card's class weights undone as segment
    undoes them: the reference a seam-free tiling must reproduce."""
    from segment_plugin.engine.inference import undo_class_weights
    from segment_plugin.engine.models.registry import resolve_model
    from segment_plugin.engine.normalize import Normalizer, raster_stats

    package = resolve_model(str(model))
    with rasterio.open(raster) as src:
        stats = raster_stats(src, (1, 2, 3), 2, 98)
        x = Normalizer(package.card, stats, "uint8")(src.read([1, 2, 3]))
    probs = np.asarray(package.load_model().predict_on_batch(x[None])[0])
    probs = undo_class_weights(probs, package.card.class_weights, out=probs)
    return np.asarray(package.card.class_codes)[probs.argmax(-1)]


def shared_raster(name: str) -> Path:
    path = RASTERS / name
    if not path.exists():
        pytest.skip(f"{path} not available (../shared/data is absent)")
    return path


def tiny_card(**changes) -> ModelCard:
    card = ModelCard(
        name="tiny",
        classes=LANDCOVER_CLASSES,
        bands=("red", "green", "blue"),
        normalization=Normalization("scale", scale=1 / 255),
        input_dtype="uint8",
        resolution_m=None,
        tile_size=64,
        architecture="tiny-test-cnn",
        description="random-weight CNN for tests",
        limitations="random weights: every scene",
    )
    return replace(card, **changes)


def build_tiny_model(bands: int = 3, classes: int = 5):
    """A small fully-convolutional softmax CNN, fixed random weights, 5 px receptive field."""
    import keras

    keras.utils.set_random_seed(7)
    inputs = keras.Input((None, None, bands))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    outputs = keras.layers.Conv2D(classes, 1, activation="softmax")(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models") / "tiny"
    save_package(build_tiny_model(), tiny_card(), folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_half_metre(tmp_path_factory) -> Path:
    """The same network, declared to work at 0.5 m: inputs at other resolutions get resampled."""
    folder = tmp_path_factory.mktemp("models") / "tiny05"
    save_package(build_tiny_model(), tiny_card(name="tiny05", resolution_m=0.5), folder)
    return folder


def scene(height: int, width: int, bands: int = 3, seed: int = 0) -> np.ndarray:
    """A synthetic 'orthophoto': smooth colour fields plus blocks and noise, uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    data = np.empty((bands, height, width), np.float32)
    for b in range(bands):
        fx, fy, phase = rng.uniform(0.01, 0.06), rng.uniform(0.01, 0.06), rng.uniform(0, 6)
        data[b] = 120 + 90 * np.sin(xx * fx + phase) * np.cos(yy * fy)
    for _ in range(12):
        y, x = rng.integers(0, height - 8), rng.integers(0, width - 8)
        h, w = rng.integers(4, max(5, height // 4)), rng.integers(4, max(5, width // 4))
        data[:, y : y + h, x : x + w] = rng.uniform(0, 255, (bands, 1, 1))
    data += rng.normal(0, 6, data.shape)
    return np.clip(data, 0, 255).astype(np.uint8)


def write_raster(
    path: Path,
    data: np.ndarray,
    crs: str | None = "EPSG:28992",
    transform=None,
    nodata=None,
    colorinterp=None,
    descriptions=None,
) -> Path:
    bands, height, width = data.shape
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": bands,
        "dtype": data.dtype.name,
        "transform": transform or from_origin(120000.0, 430000.0, 0.25, 0.25),
        "nodata": nodata,
    }
    if crs:
        profile["crs"] = crs
    if bands == 4 and colorinterp and colorinterp[-1].name == "alpha":
        profile["photometric"] = "RGB"
        profile["alpha"] = "YES"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if colorinterp:
            dst.colorinterp = colorinterp
        for i, text in enumerate(descriptions or [], start=1):
            dst.set_band_description(i, text)
    return path


class Recorder(Reporter):
    """A reporter that keeps every event, for assertions."""

    def __init__(self):
        super().__init__()
        self.events = []

    def emit(self, event, **fields):
        self.events.append((event, fields))

    def logs(self):
        return [f["message"] for e, f in self.events if e == "log"]


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The engine CLI as the plugin runs it: a separate process, JSON lines on stdout."""
    return subprocess.run(
        [sys.executable, "-m", "segment_plugin.engine", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


def events(stdout: str) -> list[dict]:
    """The JSON events of an engine run (every stdout line must be one)."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


def cancel_mid_run(command: list[str]) -> tuple[int, float, list[dict]]:
    """Run an engine command and SIGTERM it (QGIS's Cancel) at its first progress below half.

    Returns its exit code, the seconds it took to exit, and the events it sent after the signal.
    """
    import signal
    import time

    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] == "progress" and 0 < event["fraction"] < 0.5:
            break
    else:
        pytest.fail("no progress before the end")
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rest = [json.loads(line) for line in proc.stdout]
    code = proc.wait(30)
    return code, time.monotonic() - started, rest


def assert_one_error(code, lines, expected, exit_code=2):
    """Exit ``exit_code``, one ``error:`` line saying ``expected``, no traceback."""
    assert code == exit_code
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, lines
    assert expected in errors[0], errors[0]
    assert not any("Traceback" in line for line in lines)


def no_outputs(folder):
    """No output named out… and no hidden temporary of one in ``folder``."""
    return not [p for p in folder.iterdir() if p.name.startswith(("out", ".out"))]


def write_png(path, array):
    """``array`` (bands, rows, cols) as a plain PNG, as chip folders hold them."""
    bands = array.shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(
            path,
            "w",
            driver="PNG",
            width=array.shape[2],
            height=array.shape[1],
            count=bands,
            dtype="uint8",
        ) as dst:
            dst.write(array)
