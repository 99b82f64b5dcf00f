"""evaluate --prediction: an existing class raster against a reference, no model involved."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from conftest import shared_raster, write_raster

from segment_plugin.engine import cli
from segment_plugin.engine.errors import InputError
from segment_plugin.engine.evaluate import evaluate
from segment_plugin.engine.params import EvaluateParams


def test_prediction_vs_reference_by_hand(tmp_path):
    truth = np.array([[[0, 0, 1, 1], [2, 2, 255, 1]]], np.uint8)
    guess = np.array([[[0, 1, 1, 1], [2, 0, 0, 255]]], np.uint8)
    ref = write_raster(tmp_path / "ref.tif", truth)
    pred = write_raster(tmp_path / "pred.tif", guess, nodata=255)
    with rasterio.open(pred, "r+") as ds:
        ds.update_tags(
            CLASSES=json.dumps(
                [
                    {"code": c, "name": n, "color": "#000000"}
                    for c, n in ((0, "bare"), (1, "roof"), (2, "tree"))
                ]
            )
        )
    result = evaluate(EvaluateParams(prediction=pred, reference=ref))
    # pixels: (0,0) (0,1) (1,1) (1,1) | (2,2) (2,0) [ignore] [pred nodata → not counted]
    assert result["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert result["per_class_iou"] == {
        "bare": pytest.approx(1 / 3, abs=1e-5),
        "roof": pytest.approx(2 / 3, abs=1e-5),
        "tree": pytest.approx(1 / 2, abs=1e-5),
    }
    assert result["pixels"] == 6


def test_real_reference_against_itself(tmp_path, capsys):
    reference = shared_raster("chesapeake_m_3907833_nw_17_1_lc_classes.tif")
    assert (
        cli.main(["evaluate", "--prediction", str(reference), "--reference", str(reference)]) == 0
    )
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["miou"] == 1.0 and report["pixel_accuracy"] == 1.0


def test_bad_combinations(tmp_path):
    with pytest.raises(InputError, match="give either"):
        EvaluateParams(images=tmp_path, prediction=tmp_path / "p.tif", reference=tmp_path / "r.tif")
    with pytest.raises(InputError, match="need --reference"):
        EvaluateParams(prediction=tmp_path / "p.tif")
    with pytest.raises(InputError, match="--tta needs a model to run"):
        EvaluateParams(prediction=tmp_path / "p.tif", reference=tmp_path / "r.tif", tta=True)
    with pytest.raises(InputError, match="--keep-class-weights needs a model to run"):
        EvaluateParams(
            prediction=tmp_path / "p.tif", reference=tmp_path / "r.tif", keep_class_weights=True
        )
    a = write_raster(tmp_path / "a.tif", np.zeros((1, 8, 8), np.uint8))
    b = write_raster(tmp_path / "b.tif", np.zeros((1, 8, 9), np.uint8))
    with pytest.raises(InputError, match="is not on the grid"):
        evaluate(EvaluateParams(prediction=a, reference=b))


def test_keep_class_weights_measures_the_model_as_trained(tmp_path):
    """The reference is what the unweighted network segments; the same network whose card
    weighs all classes but building 10⁴ matches it only with --keep-class-weights."""
    from conftest import BUILDING_ONLY_WEIGHTS, build_tiny_model, scene, tiny_card

    from segment_plugin.engine.inference import segment
    from segment_plugin.engine.models.package import save_package
    from segment_plugin.engine.params import SegmentParams

    raster = write_raster(tmp_path / "in.tif", scene(80, 80))
    save_package(build_tiny_model(), tiny_card(), tmp_path / "plain")
    weighted_card = tiny_card(class_weights=BUILDING_ONLY_WEIGHTS)
    save_package(build_tiny_model(), weighted_card, tmp_path / "weighted")
    reference = tmp_path / "ref.tif"
    segment(SegmentParams(raster, reference, model=str(tmp_path / "plain")))
    common = {"raster": raster, "reference": reference, "model": str(tmp_path / "weighted")}
    kept = evaluate(EvaluateParams(**common, keep_class_weights=True))
    undone = evaluate(EvaluateParams(**common))
    assert kept["miou"] == 1.0 and undone["miou"] < 0.5
