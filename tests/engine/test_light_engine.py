"""The inference-only engine: segment, vectorise, evaluate and export-rle without TensorFlow.

In the full engine these run the CLI with TensorFlow and Keras made unimportable
(tests/engine/no_tensorflow); ``make check-light`` runs them in a real inference-only
environment, where that changes nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import rasterio
from conftest import DEMO, ROOT, events

NO_TENSORFLOW = Path(__file__).parent / "no_tensorflow"
DUBAI_TILE_8 = ROOT.parent / "shared" / "data" / "landcover" / "dubai" / "tile_8"


def light_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(NO_TENSORFLOW), str(ROOT)]))
    return subprocess.run(
        [sys.executable, "-m", "segment_plugin.engine", *args, "--progress", "json"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def demo():
    if not DEMO.exists():
        pytest.skip("the demo raster is not available")


def test_segment_vectorise_export_rle_without_tensorflow(tmp_path):
    classes, polygons = tmp_path / "classes.tif", tmp_path / "classes.gpkg"
    run = light_cli("segment", str(DEMO), "--output", str(classes), "--vector", str(polygons))
    assert run.returncode == 0, run.stderr
    logs = [e["message"] for e in events(run.stdout) if e["event"] == "log"]
    assert any("ONNX Runtime" in m for m in logs)
    with rasterio.open(classes) as src:
        counts = {int(v): int((src.read(1) == v).sum()) for v in range(5)}
    assert counts[3] > 10_000  # the river: the bundled model's map, not a blank one
    assert polygons.is_file()
    run = light_cli("export-rle", str(classes), "--output", str(tmp_path / "rle.json"))
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "rle.json").read_text())


def test_keras_runtime_and_training_say_they_need_the_full_engine(tmp_path):
    run = light_cli("segment", str(DEMO), "--runtime", "keras", "--output", str(tmp_path / "k.tif"))
    assert run.returncode == 3
    error = [e for e in events(run.stdout) if e["event"] == "error"][0]
    assert error["code"] == "missing_dependency" and "inference-only engine" in error["message"]
    assert not (tmp_path / "k.tif").exists()
    run = light_cli("train", "--images", str(tmp_path), "--output", str(tmp_path / "m"))
    error = [e for e in events(run.stdout) if e["event"] == "error"][0]
    assert run.returncode == 3 and error["code"] == "missing_dependency"
    assert "training needs the full engine" in error["message"]
    assert "Traceback" not in run.stderr


def test_evaluate_without_tensorflow(tmp_path):
    if not DUBAI_TILE_8.is_dir():
        pytest.skip("../shared/data is not there")
    for name in ("image_part_001.jpg", "image_part_001_mask.png"):  # one pair: a test's time
        (tmp_path / name).symlink_to(DUBAI_TILE_8 / name)
    run = light_cli("evaluate", "--images", str(tmp_path), "--gsd", "1.0")
    assert run.returncode == 0, run.stderr
    result = [e for e in events(run.stdout) if e["event"] == "result"][0]["data"]
    assert result["miou"] > 0.5
