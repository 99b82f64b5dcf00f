"""Partially labelled sets, multi-source sampling and training at a fixed ground resolution:
the marginal loss and the partial metrics against values computed by hand, labels.json, the
sources file, patches cut at the model's resolution."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio

from segment_plugin.engine.errors import InputError
from segment_plugin.engine.models.package import Normalization
from segment_plugin.engine.training import metrics
from segment_plugin.engine.training.chips import (
    PatchSampler,
    Scene,
    class_pixel_counts,
    pairs_folder,
    scene_weights,
)
from segment_plugin.engine.training.losses import (
    OTHER_BASE,
    cross_entropy,
    dice,
    focal,
    lovasz,
    make_loss,
    other_target,
    unnamed_distillation,
    with_distillation,
)
from segment_plugin.engine.training.sources import load_sources, read_sources

IGN = metrics.IGNORE_INDEX
OTHER = metrics.OTHER_INDEX

# one image of three pixels, three classes
PROBS = np.array([[[[0.5, 0.3, 0.2], [0.1, 0.6, 0.3], [0.2, 0.2, 0.6]]]], np.float32)


def test_other_target_encodes_the_labelled_classes():
    assert other_target([0]) == OTHER_BASE + 1
    assert other_target([1, 2, 3]) == OTHER_BASE + 0b1110
    assert other_target([4, 4]) == OTHER_BASE + 16


def test_marginal_cross_entropy_by_hand():
    # pixel 1: class 0; pixel 2: "other" in a set labelling class 0 → class 1 or 2; pixel 3: ignore
    y_true = np.array([[[0, other_target([0]), IGN]]])
    expected = -(math.log(0.5) + math.log(0.6 + 0.3)) / 2
    assert float(cross_entropy(y_true, PROBS)) == pytest.approx(expected, rel=1e-5)
    # weighted: the other pixel's weight is its classes' weights averaged by the posterior
    weights = [1.0, 2.0, 4.0]
    other_w = (0.6 * 2 + 0.3 * 4) / 0.9
    expected = -(math.log(0.5) + other_w * math.log(0.9)) / (1 + other_w)
    assert float(cross_entropy(y_true, PROBS, weights)) == pytest.approx(expected, rel=1e-5)
    # focal takes the same marginal probability
    expected = -(0.5**2 * math.log(0.5) + 0.1**2 * math.log(0.9)) / 2
    assert float(focal(y_true, PROBS)) == pytest.approx(expected, rel=1e-5)


def test_marginal_of_a_set_labelling_two_classes():
    y_true = np.array([[[other_target([1, 2]), other_target([0, 1]), 2]]])
    expected = -(math.log(0.5) + math.log(0.3) + math.log(0.6)) / 3
    assert float(cross_entropy(y_true, PROBS)) == pytest.approx(expected, rel=1e-5)


def test_classes_no_label_names_keep_the_other_pixels_in_the_loss():
    """A set labelling class 0 only: the fine-tune's class weights give the other classes 1,
    not 0, so its "other" pixels still count (with zeros a roads-only fine-tune, seeing only
    its road pixels, learnt road everywhere)."""
    from segment_plugin.engine.progress import Reporter
    from segment_plugin.engine.training.train import _loss_class_weights

    base = SimpleNamespace(class_weights=(1.0, 1.0, 1.0))  # any base: a fine-tune
    weights = _loss_class_weights("auto", np.array([5000, 0, 0]), base, Reporter())
    assert weights.tolist() == [1.0, 1.0, 1.0]
    y_true = np.array([[[0, other_target([0]), IGN]]])
    expected = -(math.log(0.5) + math.log(0.9)) / 2
    assert float(cross_entropy(y_true, PROBS, weights)) == pytest.approx(expected, rel=1e-5)
    full = _loss_class_weights("median_frequency", np.array([600, 300, 100, 0]), None, Reporter())
    assert full.tolist() == pytest.approx([0.5, 1.0, 3.0, 1.0])  # absent: 1 (never a target)


def test_dice_and_lovasz_use_known_pixels_only():
    partial = np.array([[[0, other_target([0]), 2]]])
    known_only = np.array([[[0, IGN, 2]]])
    assert float(dice(partial, PROBS)) == pytest.approx(float(dice(known_only, PROBS)))
    assert float(lovasz(partial, PROBS)) == pytest.approx(float(lovasz(known_only, PROBS)))


def test_fully_labelled_loss_is_unchanged():
    """Without *other* pixels the loss is the plain weighted cross-entropy (+ Dice)."""
    y_true = np.array([[[0, 1, 2]]], np.uint8)
    weights = np.array([1.0, 2.0, 4.0], np.float32)
    ce = -(1 * math.log(0.5) + 2 * math.log(0.6) + 4 * math.log(0.6)) / 7
    assert float(cross_entropy(y_true, PROBS, weights)) == pytest.approx(ce, rel=1e-5)
    total = float(make_loss("ce+dice", weights)(y_true, PROBS))
    assert total == pytest.approx(ce + float(dice(y_true, PROBS)), rel=1e-5)


def test_unnamed_distillation_by_hand():
    """KL(teacher ‖ model) over the classes an *other* pixel may be, both renormalised there."""
    teacher = np.array([[[[0.7, 0.1, 0.2], [0.2, 0.2, 0.6], [0.1, 0.1, 0.8]]]], np.float32)
    # pixel 2 is "other" in a set labelling class 0: classes 1 and 2, model 2/3 : 1/3, teacher
    # 1/4 : 3/4; pixels 1 (known) and 3 (ignore) add nothing
    y_true = np.array([[[0, other_target([0]), IGN]]])
    expected = 0.25 * math.log(0.25 / (2 / 3)) + 0.75 * math.log(0.75 / (1 / 3))
    got = float(unnamed_distillation(y_true, PROBS, teacher))
    assert got == pytest.approx(expected, rel=1e-5)
    # what the set names does not count: a teacher that differs only in class 0 agrees
    assert float(unnamed_distillation(y_true, PROBS, np.array([[[[0.7, 0.2, 0.1]] * 3]]))) == (
        pytest.approx(0.0, abs=1e-6)
    )
    # the combined loss takes the model's channels, then the teacher's
    both = np.concatenate([PROBS, teacher], axis=-1)
    loss = make_loss("ce+dice")
    combined = float(with_distillation(loss, 3, 2.0)(y_true, both))
    assert combined == pytest.approx(float(loss(y_true, PROBS)) + 2 * expected, rel=1e-5)
    # fully labelled: exactly the loss alone
    full = np.array([[[0, 1, 2]]])
    assert float(with_distillation(loss, 3, 2.0)(full, both)) == float(loss(full, PROBS))


def test_partial_report_by_hand():
    # a set labelling class 1 (road-like): truth is 1 or other
    truth = np.array([1, 1, 1, OTHER, OTHER, OTHER, OTHER, IGN])
    pred = np.array([1, 1, 0, 1, 0, 2, 2, 1])
    matrix = metrics.confusion_with_other(truth, pred, 3)
    assert matrix.tolist() == [[0, 0, 0], [1, 2, 0], [0, 0, 0], [1, 1, 2]]
    rep = metrics.report(matrix, ["a", "b", "c"], labelled=(1,))
    # class b: TP 2, FP 1 (an other pixel), FN 1 → 0.5; a and c have no IoU in this set
    assert rep["per_class_iou"] == {"a": None, "b": 0.5, "c": None}
    assert rep["miou"] == 0.5
    assert rep["pixel_accuracy"] == pytest.approx(5 / 7, abs=1e-5)  # 2 b right, 3 others not b
    assert rep["labelled_classes"] == ["b"] and "partially labelled" in rep["partial_labels"]
    # a labelled class the split never shows (the drone chips' water) has no IoU either
    both = metrics.report(matrix, ["a", "b", "c"], labelled=(1, 2))
    assert both["per_class_iou"]["c"] is None and both["miou"] == 0.5


def _write_pair(folder, stem, image, mask, transform=None, crs=None):
    profile = {"driver": "GTiff", "width": mask.shape[1], "height": mask.shape[0]}
    if transform is not None:
        profile.update(transform=transform, crs=crs)
    with rasterio.open(folder / f"{stem}.tif", "w", count=3, dtype="uint8", **profile) as dst:
        dst.write(image)
    with rasterio.open(folder / f"{stem}_mask.tif", "w", count=1, dtype="uint8", **profile) as dst:
        dst.write(mask, 1)


@pytest.fixture
def roads_folder(tmp_path):
    folder = tmp_path / "roads"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        mask = np.zeros((64, 80), np.uint8)
        mask[20:30] = 4  # a road
        mask[:2] = 255
        _write_pair(folder, f"tile_{k}", rng.integers(0, 255, (3, 64, 80), np.uint8), mask)
    (folder / "labels.json").write_text(json.dumps({"labelled": [4], "other": 0}))
    return folder


def test_labels_json_marks_other_pixels(roads_folder):
    scenes = pairs_folder(roads_folder, [0, 1, 2, 3, 4], gsd=1.0, source="roads")
    scene = scenes[0]
    assert scene.labelled == (4,) and scene.gsd == 1.0 and scene.source == "roads"
    assert set(np.unique(scene.labels)) == {4, OTHER, IGN}
    targets = scene.loss_targets(scene.labels)
    assert set(np.unique(targets)) == {4, IGN, other_target([4])}
    # a folder without labels.json is fully labelled: 0 is background there
    (roads_folder / "labels.json").unlink()
    full = pairs_folder(roads_folder, [0, 1, 2, 3, 4])[0]
    assert full.labelled is None and set(np.unique(full.labels)) == {0, 4, IGN}


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"labelled": [7], "other": 0}, "must be class codes"),
        ({"labelled": [4], "other": 4}, "must be class codes"),
        ({"labelled": [], "other": 0}, "must be class codes"),
        ({"labelled": [4], "other": 255}, "another value below 255"),
        ({"other": 0}, "expected"),
    ],
)
def test_bad_labels_json_is_refused(roads_folder, spec, message):
    (roads_folder / "labels.json").write_text(json.dumps(spec))
    with pytest.raises(InputError, match=message):
        pairs_folder(roads_folder, [0, 1, 2, 3, 4])


def test_georeferenced_chips_know_their_resolution(tmp_path):
    from rasterio.transform import from_origin

    mask = np.zeros((32, 32), np.uint8)
    image = np.zeros((3, 32, 32), np.uint8)
    _write_pair(tmp_path, "chip", image, mask, from_origin(0, 100, 0.25, 0.25), "EPSG:28992")
    assert pairs_folder(tmp_path, [0, 1])[0].gsd == 0.25


def _scene(side, gsd, source, label=1):
    labels = np.full((side, side), label, np.uint8)
    image = np.arange(side * side * 3, dtype=np.float32).reshape(3, side, side) % 251
    return Scene(f"{source}_{side}", image.astype(np.uint8), labels, gsd=gsd, source=source)


def test_patches_are_cut_at_the_model_resolution():
    # a 0.1 m scene at 0.5 m: a 64 px patch covers 320 scene pixels, so a 100 px scene becomes
    # 20 px of labels padded with ignore
    small = _scene(100, 0.1, "drone")
    sampler = PatchSampler([small], 64, lambda x: x, 255.0, augment=False, resolution=0.5)
    image, labels = sampler.random_patch(np.random.default_rng(0))
    assert image.shape == (3, 64, 64)
    assert (labels[:20, :20] == 1).all() and (labels[20:] == IGN).all()
    assert (labels[:, 20:] == IGN).all()
    # a 2 m scene at 0.5 m: 16 scene pixels become the 64 px patch
    coarse = _scene(200, 2.0, "coarse")
    sampler = PatchSampler([coarse], 64, lambda x: x, 255.0, augment=False, resolution=0.5)
    _, labels = sampler.random_patch(np.random.default_rng(0))
    assert (labels == 1).all()
    # unknown resolution: the scene's own scale, as before
    plain = _scene(200, None, "plain")
    sampler = PatchSampler([plain], 64, lambda x: x, 255.0, augment=False, resolution=0.5)
    assert sampler.scale_of(plain) == 1.0


def test_training_patches_of_small_chips_are_mosaics_of_their_source():
    """Drone chips at 0.5 m fill a fifth of a patch each way: augmented patches tile crops of
    several chips of the same source and labelled classes (never another source's, never a
    fully labelled set with a partial one), each cell's *other* pixels as its set says."""
    drone = [_scene(100, 0.1, "drone", label=k) for k in (1, 2, 3)]
    for scene in drone:
        scene.labelled = (1, 2, 3)
        scene.labels[:50] = OTHER  # the top half is "none of building, woodland, water"
    full = [replace(_scene(100, 0.1, "drone", label=4), name="full")]  # same source, full labels
    other_source = [_scene(100, 0.1, "dubai", label=0)]
    sampler = PatchSampler(
        drone + full + other_source,
        64,
        lambda x: x,
        255.0,
        augment=True,
        resolution=0.5,
        source_weights={"drone": 0.98, "dubai": 0.02},
    )
    rng = np.random.default_rng(0)
    mixed, covered = 0, []
    for _ in range(30):
        image, targets = sampler.random_patch(rng)
        assert image.shape == (3, 64, 64) and targets.shape == (64, 64)
        values = set(np.unique(targets).tolist()) - {IGN}
        if values & {1, 2, 3}:  # a partial drone patch: its cells come from partial drone chips
            assert values <= {1, 2, 3, other_target([1, 2, 3])}
            mixed += len(values & {1, 2, 3}) > 1
            covered.append((targets != IGN).mean())
        else:
            assert len(values) == 1  # the fully labelled chip or Dubai, alone
    assert mixed >= 10
    assert np.mean(covered) > 0.6  # one 10-40 px chip alone: 2-39 % of the patch
    # validation and augment=False: one chip, padded with ignore, as before
    plain = PatchSampler(drone, 64, lambda x: x, 255.0, augment=False, resolution=0.5)
    _, targets = plain.random_patch(np.random.default_rng(0))
    assert (targets[20:] == IGN).all() and (targets[:, 20:] == IGN).all()


def test_scene_at_resolution_resamples_image_and_labels():
    scene = _scene(100, 0.1, "drone")
    half = scene.at_resolution(0.5)
    assert half.image.shape == (3, 20, 20) and half.labels.shape == (20, 20)
    assert half.gsd == 0.5 and half.image.dtype == np.uint8
    assert scene.at_resolution(None) is scene and scene.at_resolution(0.102) is scene


def test_sources_share_the_patches_by_weight():
    big = [_scene(400, 1.0, "forest", label=2) for _ in range(20)]
    small = [_scene(100, 1.0, "dubai", label=1)]
    pixels = [int((s.labels != IGN).sum()) for s in big + small]
    names = [s.source for s in big + small]
    weights = scene_weights(pixels, names, {"forest": 0.25, "dubai": 0.75})
    assert weights[-1] == pytest.approx(0.75) and weights[:-1].sum() == pytest.approx(0.25)
    # without source weights, by labelled pixels: the big source drowns the small one
    assert scene_weights(pixels, names, None)[-1] < 0.01
    rng = np.random.default_rng(1)
    sampler = PatchSampler(
        big + small, 32, lambda x: x, 255.0, False, source_weights={"forest": 0.25, "dubai": 0.75}
    )
    drawn = [sampler.random_patch(rng)[1][0, 0] for _ in range(400)]
    assert 0.65 < np.mean(np.asarray(drawn) == 1) < 0.85
    # class frequencies the loss weights are computed from follow the same shares
    counts = class_pixel_counts(big + small, 3, {"forest": 0.25, "dubai": 0.75})
    assert counts.tolist() == pytest.approx([0.0, 0.75, 0.25])


def test_sources_file_and_hold_out(tmp_path, roads_folder):
    spec = {
        "sources": [
            {
                "name": "roads",
                "folder": "roads",
                "gsd_m": 1.0,
                "weight": 2,
                "validation": ["tile_2*"],
            }
        ]
    }
    path = tmp_path / "sources.json"
    path.write_text(json.dumps(spec))
    sources = read_sources(path)
    assert sources[0].folder == roads_folder and sources[0].weight == 2
    train, val = load_sources(sources, [0, 1, 2, 3, 4], None)
    assert [s.name for s in train] == ["tile_0.tif", "tile_1.tif"]
    assert [s.name for s in val] == ["tile_2.tif"] and val[0].source == "roads"
    spec["sources"][0]["validation"] = ["nothing*"]
    path.write_text(json.dumps(spec))
    with pytest.raises(InputError, match="validation patterns"):
        load_sources(read_sources(path), [0, 1, 2, 3, 4], None)
    spec["sources"][0]["weight"] = 0
    path.write_text(json.dumps(spec))
    with pytest.raises(InputError, match="positive"):
        read_sources(path)
    path.write_text("{}")
    with pytest.raises(InputError, match="not a sources file"):
        read_sources(path)


def _flat_tile(low: int) -> np.ndarray:
    """A low-contrast 3-band tile: a ramp from ``low`` to ``low + 10``."""
    return np.broadcast_to(np.linspace(low, low + 10, 40).round(), (3, 30, 40)).astype(np.uint8)


def test_a_stretching_models_images_of_one_scene_are_stretched_together(tmp_path):
    """A source's ``scene`` pattern groups the images cut from one larger scene: they are
    stretched by their pooled percentiles, as segment would stretch that scene; an image that
    matches no scene is stretched alone."""
    from segment_plugin.engine.training.chips import Scene, stretched_scenes
    from segment_plugin.engine.training.sources import Source, scene_groups

    labels = np.zeros((30, 40), np.uint8)
    scenes = [
        Scene(name, _flat_tile(low), labels, source="forest")
        for name, low in (("s1_a.png", 100), ("s1_b.png", 140), ("s2_a.png", 100), ("x.png", 60))
    ]
    groups = scene_groups(scenes, [Source("forest", tmp_path, 1.0, scene=r"^(s\d)_")])
    assert groups == ["forest/s1", "forest/s1", "forest/s2", "#3"]
    norm = Normalization(stretch=True)
    dark, bright, alone, other = (s.image for s in stretched_scenes(scenes, groups, norm))
    assert dark.min() == 0 and dark.max() < 100 and bright.min() > 155 and bright.max() == 255
    assert alone.min() == other.min() == 0 and alone.max() == other.max() == 255
    # limited to a gain of 2, scene s1 (values 100..150, middle 125) maps x to 2 (x - 61.25):
    # 100 -> 77.5, 110 -> 97.5, 140 -> 157.5, 150 -> 177.5, rounded half to even
    limited = stretched_scenes(scenes, groups, replace(norm, max_gain=2.0))
    dark, bright = limited[0].image, limited[1].image
    assert (dark.min(), dark.max(), bright.min(), bright.max()) == (78, 98, 158, 178)
    assert scene_groups(scenes, [Source("forest", tmp_path, 1.0)]) == ["#0", "#1", "#2", "#3"]
    spec = {"sources": [{"name": "f", "folder": "f", "weight": 1}]}
    for pattern, message in (("(s)(1)", "one group"), ("(", "missing")):
        spec["sources"][0]["scene"] = pattern
        (tmp_path / "s.json").write_text(json.dumps(spec))
        with pytest.raises(InputError, match=f"source f: scene .*{message}"):
            read_sources(tmp_path / "s.json")


def test_evaluate_sources_stretches_a_scenes_held_out_images_together(tmp_path, monkeypatch):
    """evaluate --sources with a stretching model: one scene's held-out images go to the model
    stretched by their pooled statistics (as training validated them), not each by its own."""
    from conftest import build_tiny_model, tiny_card

    from segment_plugin.engine import inference
    from segment_plugin.engine.evaluate import evaluate
    from segment_plugin.engine.models.package import Normalization, save_package
    from segment_plugin.engine.params import EvaluateParams

    folder = tmp_path / "forest"
    folder.mkdir()
    for name, low in (("s1_a", 100), ("s1_b", 140)):
        _write_pair(folder, name, _flat_tile(low), np.full((30, 40), 2, np.uint8))
    card = tiny_card(normalization=Normalization(stretch=True))
    save_package(build_tiny_model(), card, tmp_path / "model")
    seen, predict = [], inference.predict_array

    def recording(model, normalizer, image, *args, **kwargs):
        seen.append(normalizer(image).max())
        return predict(model, normalizer, image, *args, **kwargs)

    monkeypatch.setattr(inference, "predict_array", recording)
    entry = {"name": "forest", "folder": "forest", "weight": 1, "validation": ["s1_*"]}
    for scene, expected in (("", [1.0, 1.0]), (r"^(s\d)_", [pytest.approx(0.2, abs=0.02), 1.0])):
        (tmp_path / "sources.json").write_text(json.dumps({"sources": [{**entry, "scene": scene}]}))
        seen.clear()
        evaluate(EvaluateParams(model=str(tmp_path / "model"), sources=tmp_path / "sources.json"))
        assert seen == expected


def test_evaluate_sources_scores_each_scene(tmp_path, tiny_model):
    """evaluate --sources adds each held-out scene's mIoU (the source's ``scene`` groups): the
    same as that scene's images evaluated alone; a source without a pattern has none."""
    from segment_plugin.engine.evaluate import evaluate
    from segment_plugin.engine.params import EvaluateParams

    folder = tmp_path / "drone"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for name in ("aa_1", "aa_2", "bb_1"):
        image = rng.integers(0, 255, (3, 30, 40), np.uint8)
        _write_pair(folder, name, image, rng.integers(0, 5, (30, 40)).astype(np.uint8))

    def scored(patterns, scene="^([a-z]+)_"):
        spec = {"name": "drone", "folder": "drone", "weight": 1, "scene": scene}
        spec["validation"] = patterns
        (tmp_path / "s.json").write_text(json.dumps({"sources": [spec]}))
        params = EvaluateParams(model=str(tiny_model), sources=tmp_path / "s.json")
        return evaluate(params)["per_source"]["drone"]

    both = scored(["aa_*", "bb_*"])
    assert both["per_scene"] == {"aa": scored(["aa_*"])["miou"], "bb": scored(["bb_*"])["miou"]}
    assert both["per_scene"]["aa"] != both["per_scene"]["bb"]
    assert "per_scene" not in scored(["aa_*", "bb_*"], scene="")


def test_evaluate_a_partial_set_and_sources(tmp_path, roads_folder, tiny_model_half_metre):
    """evaluate scores a partial set's labelled classes only, segmented at the model's resolution
    and scored on the labels' own grid, and a sources file's held-out images per source."""
    from segment_plugin.engine.evaluate import evaluate
    from segment_plugin.engine.params import EvaluateParams

    model = str(tiny_model_half_metre)
    result = evaluate(EvaluateParams(model=model, images=roads_folder, gsd=1.0))
    assert result["labelled_classes"] == ["road"]
    assert [n for n, v in result["per_class_iou"].items() if v is not None] == ["road"]
    assert len(result["confusion_matrix"]) == 6  # five classes and the "other" row
    # segmented at 0.5 m (128 × 160 px), written back on the 64 × 80 px grid: the labels' pixels
    assert result["pixels"] == 3 * 62 * 80
    native = evaluate(EvaluateParams(model=model, images=roads_folder))
    assert native["pixels"] == 3 * 62 * 80  # resolution unknown: segmented at its own scale
    assert native["confusion_matrix"] != result["confusion_matrix"]

    sources = tmp_path / "sources.json"
    entry = {
        "name": "roads",
        "folder": "roads",
        "gsd_m": 1.0,
        "weight": 1,
        "validation": ["tile_2*"],
    }
    sources.write_text(json.dumps({"sources": [entry]}))
    by_source = evaluate(EvaluateParams(model=model, sources=sources))
    assert list(by_source["per_source"]) == ["roads"]
    assert by_source["per_source"]["roads"]["pixels"] == 62 * 80
    assert by_source["miou"] == by_source["per_source"]["roads"]["miou"]
    with pytest.raises(InputError, match="give either"):
        EvaluateParams(model=model, sources=sources, images=roads_folder)


def test_evaluate_tiles_an_image_as_segment_does(tmp_path, monkeypatch):
    """A 300 × 700 px image at tile 512: segment's fitted tile (512), not one cut to its short
    side."""
    from conftest import build_tiny_model, tiny_card

    from segment_plugin.engine import inference
    from segment_plugin.engine.evaluate import evaluate
    from segment_plugin.engine.models.package import save_package
    from segment_plugin.engine.params import EvaluateParams
    from segment_plugin.engine.tiling import fitted_tile

    folder = tmp_path / "pairs"
    folder.mkdir()
    image = np.random.default_rng(0).integers(0, 255, (3, 300, 700), np.uint8)
    _write_pair(folder, "wide", image, np.ones((300, 700), np.uint8))
    card = tiny_card(tile_size=512, input_multiple=4)
    save_package(build_tiny_model(), card, tmp_path / "model")
    sizes, predict = [], inference.predict_array

    def recording(model, normalizer, image, size, *args, **kwargs):
        sizes.append(size)
        return predict(model, normalizer, image, size, *args, **kwargs)

    monkeypatch.setattr(inference, "predict_array", recording)
    result = evaluate(EvaluateParams(model=str(tmp_path / "model"), images=folder))
    assert sizes == [fitted_tile(512, 300, 700, 4)] == [512]
    assert result["pixels"] == 300 * 700


def test_context_consistency_by_hand():
    """KL(patch ‖ centre) over the centre's pixels of known or *other* class, the patch's
    posteriors held constant; the combined loss takes the last channels as the centre's."""
    from segment_plugin.engine.training.losses import context_consistency, with_consistency

    patch = np.full((1, 3, 4, 3), 1 / 3, np.float32)
    patch[0, 1, 1] = [0.5, 0.3, 0.2]
    patch[0, 1, 2] = [0.1, 0.6, 0.3]
    centre = np.zeros_like(patch)
    centre[0, 1, 1] = [0.25, 0.25, 0.5]
    centre[0, 1, 2] = [0.2, 0.2, 0.6]
    # margin 1: the centre is pixels (1, 1) and (1, 2); the edge pixels (ignore here) never count
    y_true = np.full((1, 3, 4), IGN)
    y_true[0, 1, 1], y_true[0, 1, 2] = 0, other_target([0])

    def kl(p, q):
        return sum(a * math.log(a / b) for a, b in zip(p, q))

    both = kl([0.5, 0.3, 0.2], [0.25, 0.25, 0.5]), kl([0.1, 0.6, 0.3], [0.2, 0.2, 0.6])
    got = float(context_consistency(y_true, patch, centre, 1))
    assert got == pytest.approx(sum(both) / 2, rel=1e-5)
    y_true[0, 1, 2] = IGN  # an ignore pixel in the centre is left out
    assert float(context_consistency(y_true, patch, centre, 1)) == pytest.approx(both[0], rel=1e-5)
    assert float(context_consistency(y_true, patch, patch, 1)) == pytest.approx(0.0, abs=1e-6)
    loss = make_loss("ce+dice")
    combined = float(with_consistency(loss, 3, 0.5, 1)(y_true, np.concatenate([patch, centre], -1)))
    assert combined == pytest.approx(float(loss(y_true, patch)) + 0.5 * both[0], rel=1e-5)
