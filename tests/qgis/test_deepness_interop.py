"""Our exported bundled model runs in the real Deepness plugin (0.6.5, ../shared/peers).

Deepness' own ``MapProcessorSegmentation`` runs headless in a QGIS process with Deepness'
pinned dependencies (``.venv-peers``, made by make setup), as tests/bench/bench_peers.py runs
it; its class map must be the bundled model's map of the demo orthophoto, the demo's contrast
stretch written into the export (``--stretch-of``): at the demo's 25 cm, and at the model's own
50 cm, which Deepness' GUI takes from the model's ``resolution`` key.
"""

from __future__ import annotations

import json
import subprocess
import zipfile

import numpy as np
import pytest
from conftest import ROOT
from qgis.core import QgsRasterLayer

PEERS = ROOT.parent / "shared" / "peers" / "deepness-0.6.5.zip"
DEMO = ROOT.parent / "shared" / "data" / "rasters" / "demo_nl_gorinchem_rgb_25cm.tif"
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"


def test_exported_bundled_model_runs_in_deepness(engine_python, tmp_path):
    if not PEERS.exists() or not DEMO.exists():
        pytest.skip("../shared is absent")
    assert PEERS_PYTHON.exists(), "no .venv-peers: run make setup"
    model, ours = tmp_path / "landcover.onnx", tmp_path / "ours.tif"
    cli = [str(engine_python), "-m", "segment_plugin.engine"]
    # the bundled model stretches each raster's contrast: Deepness gets the demo's stretch
    subprocess.run([*cli, "export-onnx", "landcover", "--output", str(model), "--stretch-of",
                    str(DEMO)], check=True, capture_output=True, cwd=ROOT, timeout=300)  # fmt: skip
    # Deepness at the demo's own 25 cm, as bench_peers runs it; segment there too
    subprocess.run([*cli, "segment", str(DEMO), "--output", str(ours), "--resolution", "0.25"],
                   check=True, capture_output=True, cwd=ROOT, timeout=300)  # fmt: skip
    build = ROOT / "build" / "peers"
    if not (build / "deepness").is_dir():
        with zipfile.ZipFile(PEERS) as archive:
            archive.extractall(build)
    deepness, details = _deepness(DEMO, model, tmp_path / "deepness.npy")
    assert details["stride_px"] == 318
    mine = _classes(ours)
    assert deepness.shape == mine.shape
    assert set(np.unique(deepness)) <= {0, 1, 2, 3, 4}
    # the same classes but for context: pasted tile centres vs blended tiles (docs/onnx.md)
    assert (deepness == mine).mean() > 0.88
    assert (deepness == 3).sum() > 0.4 * deepness.size  # the river, as water
    # Deepness at the model's own 50 cm (its GUI's default from the model's resolution key)
    # against segment at its defaults, which also works at 0.5 m (measured: 93.0 % agree)
    coarse, _ = _deepness(DEMO, model, tmp_path / "deepness_50cm.npy", resolution_cm=50)
    default = tmp_path / "ours_default.tif"
    subprocess.run([*cli, "segment", str(DEMO), "--output", str(default)],
                   check=True, capture_output=True, cwd=ROOT, timeout=300)  # fmt: skip
    assert coarse.shape == (500, 500)
    assert (coarse == _classes(default)[::2, ::2]).mean() > 0.9


def _deepness(raster, model, out, resolution_cm=None):
    """Deepness' class map of ``raster`` (bench_peers' headless run) and its run's details."""
    extra = [str(resolution_cm)] if resolution_cm else []
    run = subprocess.run(
        [str(PEERS_PYTHON), "tests/bench/bench_peers.py", "deepness", str(raster), str(model),
         str(out), *extra], capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return np.load(out), json.loads(run.stdout.strip().splitlines()[-1])


def _classes(path):
    """A class raster's first band, read through QGIS."""
    layer = QgsRasterLayer(str(path), "classes")
    block = layer.dataProvider().block(1, layer.extent(), layer.width(), layer.height())
    return np.frombuffer(bytes(block.data()), np.uint8).reshape(layer.height(), layer.width())
