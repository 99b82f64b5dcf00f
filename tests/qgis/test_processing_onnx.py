"""ONNX through Processing: export a model, add a Deepness model, segment with it."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from conftest import ROOT
from qgis.core import QgsProcessingContext, QgsProcessingFeedback, QgsRasterLayer

PEERS = ROOT.parent / "shared" / "peers" / "deepness-test-models" / "dummy_segmentation_models"
FOTOMAP = ROOT.parent / "shared" / "data" / "rasters" / "deepness_dummy_fotomap_small_rgba_2cm.tif"


def run(registry, algorithm_id, parameters):
    algorithm = registry.algorithmById(f"segment_plugin:{algorithm_id}")
    feedback = QgsProcessingFeedback()
    results, ok = algorithm.run(parameters, QgsProcessingContext(), feedback)
    assert ok, feedback.textLog()
    return results


def test_deepness_model_added_and_segmented(registry, tiny_models, engine_python, tmp_path):
    """A Deepness-format model segments through our Processing algorithms."""
    model = PEERS / "two_outputs_softmax_bsx2x512x512.onnx"
    if not model.exists() or not FOTOMAP.exists():
        pytest.skip("../shared is absent")
    try:
        added = run(registry, "add_onnx_model", {"INPUT": str(model), "NAME": "peer-softmax"})
        assert added["MODEL"] == "peer-softmax"
        assert (tiny_models / "peer-softmax" / "model.onnx").is_file()
        out = tmp_path / "classes.tif"
        run(
            registry,
            "segment_layer",
            {"INPUT": str(FOTOMAP), "MODEL": "peer-softmax", "OUTPUT": str(out)},
        )
        layer = QgsRasterLayer(str(out), "classes")
        assert layer.isValid() and layer.width() == 1243
        names = [c.label for c in layer.renderer().classes()]  # styled from the card's names
        assert names == ["Coffee", "Tea"], names
    finally:
        shutil.rmtree(tiny_models / "peer-softmax", ignore_errors=True)


def test_export_onnx_then_add_it_back(registry, tiny_models, engine_python, tmp_path):
    onnx_file = tmp_path / "tiny.onnx"
    run(registry, "export_onnx", {"MODEL": "tiny", "OUTPUT": str(onnx_file)})
    assert onnx_file.stat().st_size > 1000
    try:
        added = run(registry, "add_onnx_model", {"INPUT": str(onnx_file), "NAME": "tiny-onnx"})
        assert added["MODEL"] == "tiny-onnx"
        card = (tiny_models / "tiny-onnx" / "model.json").read_text()
        assert '"background"' in card and '"tiny-onnx"' in card
    finally:
        shutil.rmtree(tiny_models / "tiny-onnx", ignore_errors=True)


def test_a_detection_model_is_refused_with_its_reason(registry, tiny_models, engine_python):
    model = PEERS.parent / "dummy_regression_models" / "dummy_regression_model.onnx"
    if not model.exists():
        pytest.skip("../shared is absent")
    algorithm = registry.algorithmById("segment_plugin:add_onnx_model")
    feedback = QgsProcessingFeedback()
    _, ok = algorithm.run({"INPUT": str(model)}, QgsProcessingContext(), feedback)
    assert not ok
    assert "Regressor model, not a segmentation model" in feedback.textLog()


def test_export_of_a_stretching_model_needs_a_raster(registry, engine_python, tmp_path):
    """The bundled model stretches each raster: Deepness' keys get STRETCH_OF's stretch, and
    without one the export is refused, naming the way out."""
    demo = ROOT.parent / "shared" / "data" / "rasters" / "demo_nl_gorinchem_rgb_25cm.tif"
    if not demo.exists():
        pytest.skip("../shared is absent")
    algorithm = registry.algorithmById("segment_plugin:export_onnx")
    feedback = QgsProcessingFeedback()
    _, ok = algorithm.run(
        {"MODEL": "landcover", "OUTPUT": str(tmp_path / "x.onnx")}, QgsProcessingContext(), feedback
    )
    assert not ok and "--stretch-of RASTER" in feedback.textLog()
    assert not (tmp_path / "x.onnx").exists()
    onnx_file = tmp_path / "landcover.onnx"
    run(registry, "export_onnx", {"MODEL": "landcover", "STRETCH_OF": str(demo),
                                  "OUTPUT": str(onnx_file)})  # fmt: skip
    read = "import json, onnx, sys; print(json.dumps({p.key: json.loads(p.value) for p in "
    read += "onnx.load(sys.argv[1]).metadata_props}['standardization_mean']))"
    mean = subprocess.run([str(engine_python), "-c", read, str(onnx_file)], capture_output=True,
                          text=True, check=True).stdout  # fmt: skip
    assert min(json.loads(mean)) > 0.05  # the demo's dark end, not a plain 1/255 scale's 0
