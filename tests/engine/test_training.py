"""Chips, training, fine-tuning, resume, cancel and evaluation on real chips from ../shared."""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import replace
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import rasterio
from conftest import SHARED, Recorder, assert_weights_only, shared_raster, write_png, write_raster

from segment_plugin.engine import cli
from segment_plugin.engine.errors import CancelledError, InputError, OutputError
from segment_plugin.engine.models.architectures import input_multiple
from segment_plugin.engine.models.package import ModelPackage
from segment_plugin.engine.models.registry import resolve_model
from segment_plugin.engine.params import EvaluateParams, TrainParams
from segment_plugin.engine.training.augment import geometric, resize_nearest
from segment_plugin.engine.training.chips import (
    export_chips,
    labelled_scene,
    near_duplicates,
    pairs_folder,
)
from segment_plugin.engine.training.metrics import OTHER_INDEX
from segment_plugin.engine.training.train import train

DUBAI = SHARED / "landcover" / "dubai"
CLASSES_JSON = SHARED / "landcover" / "classes.json"


def read_png(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            return src.read()


@pytest.fixture(scope="session")
def dubai_chips(tmp_path_factory):
    """Real Dubai image/mask pairs cut to 160×160 crops (4 train images, 2 validation)."""
    if not DUBAI.exists():
        pytest.skip("../shared/data/landcover is absent")
    root = tmp_path_factory.mktemp("dubai")
    for split, parts in (
        (
            "train",
            [
                "tile_1/image_part_001",
                "tile_2/image_part_002",
                "tile_5/image_part_003",
                "tile_6/image_part_004",
            ],
        ),
        ("val", ["tile_8/image_part_001", "tile_8/image_part_005"]),
    ):
        (root / split).mkdir()
        for part in parts:
            image = read_png(DUBAI / f"{part}.jpg")[:, 100:260, 100:260]
            mask = read_png(DUBAI / f"{part}_mask.png")[:, 100:260, 100:260]
            stem = part.replace("/", "_")
            write_png(root / split / f"{stem}.png", image)
            write_png(root / split / f"{stem}_mask.png", mask)
    return root


def quick(dubai_chips, tmp_path, **changes):
    values = dict(
        images=(dubai_chips / "train",),
        val_images=dubai_chips / "val",
        output=tmp_path / "model",
        classes=CLASSES_JSON,
        epochs=1,
        patch=64,
        batch=4,
        steps_per_epoch=3,
        seed=1,
    )
    values.update(changes)
    return TrainParams(**values)


def test_pairs_folder_reads_real_chips(dubai_chips):
    scenes = pairs_folder(dubai_chips / "train", [0, 1, 2, 3, 4])
    assert len(scenes) == 4 and scenes[0].image.shape == (3, 160, 160)
    assert set(np.unique(np.concatenate([s.labels.ravel() for s in scenes]))) <= {
        0,
        1,
        2,
        3,
        4,
        255,
    }


def test_pairs_folder_reads_image_mask_naming(tmp_path):
    write_png(tmp_path / "a_image.png", np.zeros((4, 8, 8), np.uint8))
    write_png(tmp_path / "a_mask.png", np.full((1, 8, 8), 2, np.uint8))
    (scene,) = pairs_folder(tmp_path, [0, 1, 2], bands=3)
    assert scene.image.shape == (3, 8, 8) and (scene.labels == 2).all()


def test_pairs_folder_errors(tmp_path):
    with pytest.raises(InputError, match="no image/mask pairs"):
        pairs_folder(tmp_path, [0, 1])
    write_png(tmp_path / "a.png", np.zeros((3, 8, 8), np.uint8))
    write_png(tmp_path / "a_mask.png", np.zeros((1, 8, 9), np.uint8))
    with pytest.raises(InputError, match="a.png is 8×8 but its mask is 9×8"):
        pairs_folder(tmp_path, [0, 1])
    write_png(tmp_path / "a_mask.png", np.full((1, 8, 8), 7, np.uint8))
    with pytest.raises(InputError, match=r"mask values \[7\] are not class codes \[0, 1\]"):
        pairs_folder(tmp_path, [0, 1])
    (tmp_path / "a.png").write_text("broken")
    with pytest.raises(InputError, match="cannot read"):
        pairs_folder(tmp_path, [0, 1])


def test_polygon_labels_are_sparse_and_mapped(tmp_path):
    import geopandas as gpd
    from shapely.geometry import box

    raster = write_raster(tmp_path / "r.tif", np.zeros((3, 40, 40), np.uint8))
    with rasterio.open(raster) as src:
        left, top = src.bounds.left, src.bounds.top
    frame = gpd.GeoDataFrame(
        {"kind": ["house", "lake"]},
        geometry=[
            box(left, top - 2.5, left + 2.5, top),
            box(left + 5, top - 10, left + 10, top - 5),
        ],
        crs="EPSG:28992",
    )
    frame.to_file(tmp_path / "labels.gpkg")
    labels = tmp_path / "labels.gpkg"
    scene = labelled_scene(raster, labels, "kind", {"house": 1, "lake": 3}, [0, 1, 2, 3, 4])
    assert (scene.labels[:10, :10] == 1).all() and (scene.labels[20:40, 20:40] == 3).all()
    assert (scene.labels == 255).mean() > 0.5  # unlabelled = ignore
    with pytest.raises(InputError, match="values of 'kind' without a class: lake"):
        labelled_scene(raster, labels, "kind", {"house": 1}, [0, 1, 2, 3, 4])


def test_geometric_augmentation_keeps_alignment():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, (16, 16)).astype(np.uint8)
    image = np.stack([labels * 10, labels * 20, labels * 30]).astype(np.uint8)
    for _ in range(10):
        img, lab = geometric(image, labels, rng)
        assert (img[0] == lab * 10).all()
    assert resize_nearest(labels, 32)[::2, ::2].tolist() == labels.tolist()


def test_contrast_jitter_range():
    """--contrast: the patch's spread about its mean scales by a factor from the range (then
    brightness 0.85–1.15 and band gains 0.95–1.05); a range that is no range is refused."""
    from segment_plugin.engine.training.augment import photometric

    image = np.random.default_rng(1).uniform(40, 200, (3, 64, 64)).astype(np.float32)
    spread = image.std()
    for low, high in ((0.4, 0.4), (1.0, 1.0), (0.5, 1.3)):
        for seed in range(5):
            out = photometric(image, 255.0, np.random.default_rng(seed), (low, high))
            ratio = out.std() / spread
            assert low * 0.8 < ratio < high * 1.2
    with pytest.raises(InputError, match="contrast must be LOW,HIGH"):
        TrainParams(output="m", images=("x",), contrast=(1.2, 0.8))


def test_near_duplicates_flagged(dubai_chips):
    scenes = pairs_folder(dubai_chips / "train", [0, 1, 2, 3, 4])
    copy = type(scenes[0])("copy", scenes[0].image.copy(), scenes[0].labels)
    pairs = near_duplicates([*scenes, copy])
    assert (scenes[0].name, "copy") in pairs and len(pairs) == 1
    # the training and validation areas of one raster share its image: not duplicates
    area = type(scenes[0])("other side", scenes[0].image, scenes[0].labels)
    assert near_duplicates([scenes[0], area]) == []


def test_train_save_load_evaluate_round_trip(dubai_chips, tmp_path, capsys):
    reporter = Recorder()
    result = train(quick(dubai_chips, tmp_path, epochs=2, filters=8), reporter)
    package = ModelPackage.open(tmp_path / "model")
    card = package.card
    assert card.training["filters"] == 8
    # the package holds weights only: the optimizer's state stays in .training/ for --resume
    assert_weights_only(tmp_path / "model" / "model.keras")
    assert package.load_model().get_layer("enc0_sep1").filters == 8
    assert card.architecture == "separable_unet" and [c.name for c in card.classes][1] == "building"
    assert card.metrics["miou"] == result["val_miou"] and card.training["epochs"] >= 1
    # median-frequency weights by default: the card carries them for inference to undo
    assert len(card.class_weights) == 5 and min(card.class_weights) < 1 < max(card.class_weights)
    assert card.training["planned_epochs"] == 2
    device = card.training["device"]
    assert device.startswith("CPU, ") and "(tensorflow 2." in device
    assert set(card.metrics["per_class_iou"]) == {
        "background",
        "building",
        "woodland",
        "water",
        "road",
    }
    package.load_model()  # safe_mode, TensorFlow backend
    epochs = [f["values"] for e, f in reporter.events if e == "metrics"]
    assert [e["epoch"] for e in epochs] == [1, 2] and all("val_miou" in e for e in epochs)
    progress = [f for e, f in reporter.events if e == "progress"]
    assert len([f for f in progress if "loss" in f]) == 6  # 2 epochs of 3 batches
    validating = [f["message"] for f in progress if "loss" not in f]
    assert validating == [f"epoch {e}: validating, image {i}/2" for e in (1, 2) for i in (1, 2)]
    code = cli.main(
        [
            "evaluate",
            "--model",
            str(tmp_path / "model"),
            "--images",
            str(dubai_chips / "val"),
            "--report",
            str(tmp_path / "r.html"),
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"miou", "per_class_iou", "pixel_accuracy", "confusion_matrix", "pixels"} <= set(report)
    assert report["pixels"] == sum(map(sum, report["confusion_matrix"])) > 30_000
    assert report["miou"] == pytest.approx(result["val_miou"], abs=1e-4)  # same tiling as training
    html = (tmp_path / "r.html").read_text()
    assert "<svg" in html and "Confusion matrix" in html


@pytest.mark.parametrize("arch", ["separable_unet", "efficientnet_lite0_unet"])
def test_fine_tune_with_frozen_encoder_changes_only_the_decoder(dubai_chips, tmp_path, arch):
    train(quick(dubai_chips, tmp_path, output=tmp_path / "base", arch=arch))
    base_card = ModelPackage.open(tmp_path / "base").card
    assert base_card.input_multiple == input_multiple(arch=arch)
    assert base_card.training["initial_weights"].startswith(
        "ImageNet" if arch.startswith("efficientnet") else "random"
    )
    base = ModelPackage.open(tmp_path / "base").load_model()
    before_after = train(
        quick(
            dubai_chips,
            tmp_path,
            output=tmp_path / "tuned",
            base_model=str(tmp_path / "base"),
            classes=None,
            freeze_encoder=True,
            learning_rate=0.01,
        )
    )
    # the weights training ended with (the package holds the best model, maybe the base itself)
    tuned = ModelPackage.open(tmp_path / "base").load_model()
    tuned.load_weights(tmp_path / "tuned" / ".training" / "last.weights.h5")
    assert before_after["base_val_report"]["miou"] is not None  # measured on the same area
    for before, after in zip(base.layers, tuned.layers):
        same = all(np.array_equal(a, b) for a, b in zip(before.get_weights(), after.get_weights()))
        # batch normalisation keeps the base's statistics in a fine-tune (--train-batchnorm)
        kept = before.name.startswith(("enc", "pool", "bottleneck", "stem", "block")) or (
            type(before).__name__ == "BatchNormalization"
        )
        if kept:
            assert same, before.name
        elif before.name.startswith("dec") and before.get_weights():
            assert not same, before.name


def test_fine_tuning_that_does_not_improve_hands_back_the_base_model(dubai_chips, tmp_path):
    """A wrecking learning rate: every epoch is worse than the base, so the base is kept.

    Trained with ce+lovasz, the fine-tuning loss tried on the bundled model, so that
    Lovász-softmax also runs inside Keras's compiled training step.
    """
    reporter = Recorder()
    params = quick(
        dubai_chips,
        tmp_path,
        base_model="landcover",
        classes=None,
        learning_rate=50.0,
        loss="ce+lovasz",
    )
    result = train(params, reporter)
    before = result["base_val_report"]["miou"]
    assert result["best_epoch"] == 0 and result["val_miou"] == before
    assert all(e["val_miou"] < before for e in result["history"])
    base = resolve_model("landcover").load_model()
    kept = ModelPackage.open(tmp_path / "model")
    assert kept.card.metrics["miou"] == before and kept.card.training["best_epoch"] == 0
    assert kept.card.class_weights == resolve_model("landcover").card.class_weights
    base_limits = resolve_model("landcover").card.limitations
    assert kept.card.limitations == f"seen on landcover: {base_limits}"
    for a, b in zip(base.get_weights(), kept.load_model().get_weights()):
        assert np.array_equal(a, b)
    assert any("did not improve on the base model" in m for m in reporter.logs())
    assert not any("distillation" in m for m in reporter.logs())  # fully labelled: no teacher


def test_new_classes_reinitialise_the_head(dubai_chips, tmp_path):
    train(quick(dubai_chips, tmp_path, output=tmp_path / "base"))
    six = json.loads(CLASSES_JSON.read_text())
    six["classes"].append({"code": 5, "name": "solar panel", "colour": "#222222"})
    (tmp_path / "six.json").write_text(json.dumps(six))
    reporter = Recorder()
    train(
        quick(
            dubai_chips,
            tmp_path,
            output=tmp_path / "t",
            base_model=str(tmp_path / "base"),
            classes=tmp_path / "six.json",
        ),
        reporter,
    )
    assert any("head of base is re-initialised" in m for m in reporter.logs())
    package = ModelPackage.open(tmp_path / "t")
    assert [c.code for c in package.card.classes] == [0, 1, 2, 3, 4, 5]
    assert package.load_model().outputs[0].shape[-1] == 6
    three = {"classes": six["classes"][:3]}  # masks hold codes 3 and 4: not in this list
    (tmp_path / "three.json").write_text(json.dumps(three))
    with pytest.raises(InputError, match="are not class codes"):
        train(
            quick(
                dubai_chips,
                tmp_path,
                output=tmp_path / "t3",
                base_model=str(tmp_path / "base"),
                classes=tmp_path / "three.json",
            )
        )


def test_raster_and_class_raster_scene(tmp_path):
    """A class raster on the image grid is read as is; on another grid/CRS it is resampled."""
    image = write_raster(tmp_path / "i.tif", np.zeros((3, 20, 30), np.uint8))
    labels = np.zeros((1, 20, 30), np.uint8)
    labels[0, :, 10:] = 4
    labels[0, :5] = 255
    label = write_raster(tmp_path / "l.tif", labels)
    scene = labelled_scene(image, label, None, None, [0, 4])
    assert scene.labels[10, 0] == 0 and scene.labels[10, 20] == 1 and scene.labels[0, 0] == 255

    # the left 20 columns only, at half the resolution (0.5 m), in WGS 84 → resampled, the
    # columns it does not cover are ignore
    from rasterio.warp import calculate_default_transform, reproject

    part = write_raster(tmp_path / "part.tif", labels[:, :, :20], nodata=255)
    with rasterio.open(part) as src:
        transform, width, height = calculate_default_transform(
            src.crs, "EPSG:4326", src.width, src.height, *src.bounds, resolution=None
        )
        moved = np.full((1, height, width), 255, np.uint8)
        reproject(rasterio.band(src, 1), moved[0], dst_transform=transform, dst_crs="EPSG:4326")
    wgs84 = write_raster(
        tmp_path / "wgs84.tif", moved, crs="EPSG:4326", transform=transform, nodata=255
    )
    scene = labelled_scene(image, wgs84, None, None, [0, 4])
    assert (scene.labels[8:18, 2:8] == 0).all() and (scene.labels[8:18, 12:18] == 1).all()
    assert (scene.labels[:, 22:] == 255).all()

    mapped = labelled_scene(image, label, None, {"0": 4, "4": 0}, [0, 4])
    assert mapped.labels[10, 0] == 1 and mapped.labels[10, 20] == 0
    with pytest.raises(InputError, match="values without a class: 4"):
        labelled_scene(image, label, None, {"0": 4}, [0, 4])
    plain = write_raster(tmp_path / "o.tif", labels[:, :, :20], crs=None)
    with pytest.raises(InputError, match="is not on the grid"):
        labelled_scene(image, plain, None, None, [0, 4])
    far = write_raster(
        tmp_path / "far.tif", labels, transform=rasterio.transform.from_origin(0, 0, 0.25, 0.25)
    )
    with pytest.raises(InputError, match="does not overlap"):
        labelled_scene(image, far, None, None, [0, 4])


def test_cancel_keeps_the_best_model_and_resume_continues(dubai_chips, tmp_path):
    class CancelAfterFirstEpoch(Recorder):
        def emit(self, event, **fields):
            super().emit(event, **fields)
            if event == "metrics":
                self.cancel.set()

    with pytest.raises(CancelledError, match="best model so far \\(epoch 1"):
        train(quick(dubai_chips, tmp_path, epochs=3), CancelAfterFirstEpoch())
    assert ModelPackage.open(tmp_path / "model").card.training["epochs"] == 1
    # the resume state alone, each file renamed into place whole (no partial left behind)
    state_files = sorted(p.name for p in (tmp_path / "model" / ".training").iterdir())
    assert state_files == ["last.weights.h5", "state.json"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(quick(dubai_chips, tmp_path, epochs=2, resume=True))
    assert [h["epoch"] for h in result["history"]] == [1, 2]
    # Adam's state came back with the weights: its step count (which also drives the cosine
    # decay) went on from epoch 1's 3 steps to 6, and Keras skipped nothing on loading.
    assert not [w for w in caught if "Skipping variable loading" in str(w.message)]
    with h5py.File(tmp_path / "model" / ".training" / "last.weights.h5", "r") as saved:
        assert int(saved["optimizer/vars/0"][()]) == 2 * 3  # Keras stores the step count first


def test_cancel_during_validation_stops_it(dubai_chips, tmp_path):
    """SIGTERM while an epoch's validation runs (minutes on a large area) stops it between
    batches, not after it (more than 10 s before); each validated image is a progress step."""

    class CancelWhileValidating(Recorder):
        def emit(self, event, **fields):
            super().emit(event, **fields)
            if event == "progress" and fields["message"] == "epoch 1: validating, image 1/2":
                self.cancel.set()

    recorder = CancelWhileValidating()
    with pytest.raises(CancelledError, match="before the first epoch ended: no model saved"):
        train(quick(dubai_chips, tmp_path, epochs=3), recorder)
    assert not [e for e in recorder.events if e[0] == "metrics"]  # epoch 1 was never scored
    assert not (tmp_path / "model").exists()


def test_train_bad_input(dubai_chips, tmp_path):
    (tmp_path / "model").mkdir()
    with pytest.raises(OutputError, match="exists; pass --overwrite"):
        train(quick(dubai_chips, tmp_path))
    with pytest.raises(InputError, match="nothing to resume"):
        train(quick(dubai_chips, tmp_path, resume=True))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no image/mask pairs"):
        train(quick(dubai_chips, tmp_path, images=(empty,), output=tmp_path / "m2"))
    for filters, base in ((2, None), (16, "landcover")):
        with pytest.raises(InputError, match="--filters .at least 4. sets a new model's width"):
            quick(dubai_chips, tmp_path, filters=filters, base_model=base)
    with pytest.raises(InputError, match="a new model needs --classes"):
        train(quick(dubai_chips, tmp_path, classes=None, output=tmp_path / "m3"))
    # RGB and RGB+NIR pairs: one clear message for a new model; a base model takes its own bands
    naip = SHARED / "landcover" / "naip_chesapeake"
    mixed = quick(
        dubai_chips, tmp_path, images=(dubai_chips / "train", naip), output=tmp_path / "m4"
    )
    with pytest.raises(InputError, match=r"different numbers of bands \(3, 4\): .* --bands N"):
        train(mixed)
    tuned = train(replace(mixed, classes=None, base_model="landcover", steps_per_epoch=1))
    assert tuned["val_miou"] is not None
    # a models folder that cannot be created (its parent is a file; root could write anywhere
    # else, so permissions alone would not prove it) fails before any data is read
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(OutputError, match="cannot create the models folder .*a_file/models"):
        train(quick(dubai_chips, tmp_path, output=tmp_path / "a_file" / "models" / "m4"))


def test_evaluate_raster_against_reference(dubai_chips, tmp_path, capsys):
    raster = shared_raster("chesapeake_m_3907833_nw_17_1_naip-new.tif")
    reference = shared_raster("chesapeake_m_3907833_nw_17_1_lc_classes.tif")
    train(quick(dubai_chips, tmp_path))
    result_code = cli.main(
        [
            "evaluate",
            "--model",
            str(tmp_path / "model"),
            "--raster",
            str(raster),
            "--reference",
            str(reference),
        ]
    )
    assert result_code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["pixels"] > 0.9 * 260 * 260 * (1 - 0.0355)
    with pytest.raises(Exception, match="give either --images DIR, --raster R --reference REF"):
        EvaluateParams(model="x")
    shutil.rmtree(tmp_path / "model")


@pytest.fixture
def digitised(tmp_path):
    """A real NAIP raster (Chesapeake) and polygons digitised from its reference classes."""
    import geopandas as gpd
    from rasterio.features import shapes
    from shapely.geometry import shape

    raster = shared_raster("chesapeake_m_3907833_nw_17_1_naip-new.tif")
    reference = shared_raster("chesapeake_m_3907833_nw_17_1_lc_classes.tif")
    names = {0: "field", 2: "forest", 3: "lake", 4: "street"}
    with rasterio.open(reference) as ref:
        codes = ref.read(1)
        rows = [
            (names[int(v)], shape(g))
            for g, v in shapes(codes, mask=codes != 255, transform=ref.transform)
            if int(v) in names
        ]
        crs = ref.crs
    frame = gpd.GeoDataFrame({"kind": [k for k, _ in rows]}, geometry=[g for _, g in rows], crs=crs)
    labels = tmp_path / "labels.gpkg"
    frame.to_crs("EPSG:4326").to_file(labels)  # another CRS than the raster: reprojected
    mapping = {"field": 0, "forest": 2, "lake": 3, "street": 4}
    return raster, labels, mapping


def test_export_chips_writes_georeferenced_pairs(digitised, tmp_path, capsys):
    raster, labels, mapping = digitised
    out = tmp_path / "chips"
    code = cli.main(
        [
            "export-chips",
            str(raster),
            "--labels",
            str(labels),
            "--field",
            "kind",
            "--mapping",
            json.dumps(mapping),
            "--output",
            str(out),
            "--patch",
            "128",
        ]
    )
    assert code == 0
    images = sorted(p for p in out.glob("chip_*.tif") if not p.stem.endswith("_mask"))
    assert len(images) == 9  # 260×260 in 128-px chips, edges flush
    with (
        rasterio.open(images[0]) as chip,
        rasterio.open(str(images[0]).replace(".tif", "_mask.tif")) as mask,
    ):
        assert chip.crs == mask.crs and chip.transform == mask.transform and chip.count == 4
        assert set(np.unique(mask.read(1))) <= {0, 2, 3, 4, 255}
    assert len(pairs_folder(out, [0, 1, 2, 3, 4], bands=3)) == 9  # what train --images reads
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_refused_export_chips_leaves_no_folder(digitised, tmp_path, capsys):
    raster, labels, _ = digitised
    out = tmp_path / "chips"
    argv = ["export-chips", str(raster), "--labels", str(labels), "--field", "kind"]
    argv += ["--mapping", json.dumps({"field": 0}), "--output", str(out)]  # forest etc. unmapped
    assert cli.main(argv) == 2
    assert "error:" in capsys.readouterr().err
    assert not out.exists()  # it was created empty before each refusal
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_polygons_mapped_to_other_are_partial_labels(digitised, tmp_path):
    """ "street" and "not street": the raster's scene and its exported chips name only road."""
    raster, labels, _ = digitised
    mapping = {"street": 4, "field": "other", "forest": "other", "lake": "other"}
    scene = labelled_scene(raster, labels, "kind", mapping, [0, 1, 2, 3, 4])
    assert scene.labelled == (4,)
    assert set(np.unique(scene.labels)) <= {4, OTHER_INDEX, 255} and OTHER_INDEX in scene.labels
    out = tmp_path / "chips"
    export_chips(raster, labels, "kind", mapping, out, 128)
    spec = json.loads((out / "labels.json").read_text())
    assert spec["labelled"] == [4] and spec["other"] == OTHER_INDEX
    chips = pairs_folder(out, [0, 1, 2, 3, 4], bands=3)
    assert all(c.labelled == (4,) for c in chips)
    with pytest.raises(InputError, match="at least one value mapped to a class"):
        labelled_scene(raster, labels, "kind", dict.fromkeys(mapping, "other"), [0, 1, 2, 3, 4])


def test_train_from_raster_and_polygons_split_by_area(digitised, tmp_path):
    raster, labels, mapping = digitised
    reporter = Recorder()
    result = train(
        TrainParams(
            output=tmp_path / "m",
            raster=raster,
            labels=labels,
            field="kind",
            mapping=mapping,
            classes=CLASSES_JSON,
            bands=3,
            epochs=1,
            patch=64,
            batch=4,
            steps_per_epoch=2,
        ),
        reporter,
    )
    assert result["val_report"]["pixels"] > 0
    card = ModelPackage.open(tmp_path / "m").card
    assert card.bands == ("red", "green", "blue")


def test_polygon_labels_bad_input(digitised, tmp_path):
    raster, labels, mapping = digitised
    common = dict(
        output=tmp_path / "m", raster=raster, labels=labels, classes=CLASSES_JSON, bands=3
    )
    with pytest.raises(InputError, match="no field 'klass'"):
        train(TrainParams(field="klass", **common))
    with pytest.raises(InputError, match="values of 'kind' without a class: lake"):
        train(
            TrainParams(
                field="kind", mapping={k: v for k, v in mapping.items() if k != "lake"}, **common
            )
        )
    import geopandas as gpd
    from shapely.geometry import box

    with rasterio.open(raster) as src:
        left, top = src.bounds.left, src.bounds.top
        size = 10 * src.res[0]  # one 10×10-pixel polygon: 100 labelled pixels in all
    tiny = tmp_path / "tiny.gpkg"
    gpd.GeoDataFrame(
        {"kind": ["forest"]}, geometry=[box(left, top - size, left + size, top)], crs=src.crs
    ).to_file(tiny)
    common["labels"] = tiny
    with pytest.raises(InputError, match="too few labelled pixels for a validation split"):
        train(TrainParams(field="kind", mapping=mapping, **common))


def test_patch_sampler_draws_scenes_by_labelled_pixels_up_to_a_cap():
    """Scenes are drawn by labelled pixels, each counting at most ANCHORS_PER_SCENE."""
    from segment_plugin.engine.training.chips import ANCHORS_PER_SCENE, PatchSampler, Scene

    def scene(name: str, side: int, labelled: slice) -> Scene:
        labels = np.full((side, side), 255, np.uint8)
        labels[labelled] = 1
        return Scene(name, np.zeros((3, side, side), np.uint8), labels)

    big = scene("big", 1000, np.s_[:, :])  # 1 000 000 labelled pixels
    small = scene("small", 500, np.s_[:, :])  # 250 000
    sparse = scene("sparse", 500, np.s_[:100, :])  # 50 000: only these are labelled
    sampler = PatchSampler([big, small, sparse], 64, lambda x: x, 255.0, augment=False)
    counted = [ANCHORS_PER_SCENE, ANCHORS_PER_SCENE, 50_000]
    assert sampler.weights.tolist() == pytest.approx([c / sum(counted) for c in counted])
    assert [a[0].size for a in sampler.anchors] == counted


def test_patch_batches_do_not_depend_on_the_worker_threads(dubai_chips):
    """--workers cuts patches in threads: the same batches, in order, epoch after epoch."""
    import keras

    from segment_plugin.engine.training.chips import PatchSampler
    from segment_plugin.engine.training.train import _Batches

    scenes = pairs_folder(dubai_chips / "train", [0, 1, 2, 3, 4])

    def to_hwc(image: np.ndarray) -> np.ndarray:  # what the Normalizer hands the model
        return image.transpose(1, 2, 0).astype(np.float32)

    sampler = PatchSampler(scenes, 64, to_hwc, 255.0, augment=True)
    # a model that hands back what it is given, averaged per patch: the batches as predict sees
    # them
    inputs = keras.Input((64, 64, 3))
    summary = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))

    def two_epochs(workers: int) -> list[np.ndarray]:
        batches = _Batches.make(sampler, batch=4, steps=6, seed=3, workers=workers)
        return [summary.predict(batches, verbose=0) for _ in range(2)]

    one, three = two_epochs(1), two_epochs(3)
    assert one[0].shape == (24, 3) and not np.array_equal(one[0], one[1])  # new epoch, new patches
    for a, b in zip(one, three):
        np.testing.assert_array_equal(a, b)


def test_context_jitter_cycles_patch_sizes_at_the_same_pixels(dubai_chips, tmp_path):
    """--patch-sizes: each step's patches are one size, in turn, the batch scaled to the pixels
    of --batch patches of --patch; training runs through the changing shapes."""
    from segment_plugin.engine.training.chips import PatchSampler
    from segment_plugin.engine.training.train import _Batches

    scenes = pairs_folder(dubai_chips / "train", [0, 1, 2, 3, 4])
    sampler = PatchSampler(scenes, 64, lambda image: image.transpose(1, 2, 0), 255.0, True)
    batches = _Batches.make(sampler, batch=4, steps=4, seed=3, workers=1, sizes=(32, 96))
    shapes = [(batches[i][0].shape, batches[i][1].shape) for i in range(4)]
    assert shapes == [((16, 32, 32, 3), (16, 32, 32)), ((2, 96, 96, 3), (2, 96, 96))] * 2
    reporter = Recorder()
    result = train(quick(dubai_chips, tmp_path, patch_sizes=(32, 96), steps_per_epoch=4), reporter)
    card = ModelPackage.open(tmp_path / "model").card
    assert card.training["patch_sizes"] == [32, 96] and result["val_miou"] is not None
    assert any("patches of 32, 96 px, in turn" in line for line in reporter.logs())
    with pytest.raises(InputError, match=r"patch sizes \[40\] are not multiples of 16"):
        train(quick(dubai_chips, tmp_path, patch_sizes=(32, 40), output=tmp_path / "m2"))
    with pytest.raises(InputError, match=r"patch sizes must be at least 32 pixels, got \(24,"):
        quick(dubai_chips, tmp_path, patch_sizes=(24, 64))


def test_patch_threads_default_to_one_on_the_cpu_and_several_with_a_gpu(monkeypatch):
    from segment_plugin.engine import devices

    monkeypatch.setattr(devices.os, "cpu_count", lambda: 16)
    assert devices.patch_workers(None, devices.CPU) == 1  # the model is the bottleneck there
    assert devices.patch_workers(None, devices.GPU) == 8
    assert devices.patch_workers(3, devices.GPU) == 3 and devices.patch_workers(2, devices.CPU) == 2
    monkeypatch.setattr(devices.os, "cpu_count", lambda: 2)
    assert devices.patch_workers(None, devices.GPU) == 2
    with pytest.raises(InputError, match="epochs, batch and workers must be at least 1"):
        TrainParams(output="m", images=("x",), workers=0)


@pytest.mark.parametrize("count,by_area", [(2, True), (8, True), (12, True), (13, False)])
def test_few_pair_images_are_each_split_by_area_for_validation(tmp_path, count, by_area):
    """Whole images are held out only when that makes three or more (20 %: 13 images)."""
    from segment_plugin.engine.training import train as module

    rng = np.random.default_rng(0)
    for k in range(count):
        write_png(tmp_path / f"chip_{k}.png", rng.integers(0, 255, (3, 64, 64), dtype=np.uint8))
        write_png(tmp_path / f"chip_{k}_mask.png", rng.integers(0, 5, (1, 64, 64), dtype=np.uint8))
    params = TrainParams(output=tmp_path / "m", images=(tmp_path,), classes=CLASSES_JSON)
    train_scenes, val_scenes = module._training_data(params, [0, 1, 2, 3, 4], None, [])
    areas = ["(validation area: columns" in scene.name for scene in val_scenes]
    if by_area:
        assert len(train_scenes) == len(val_scenes) == count and all(areas)
    else:
        assert len(val_scenes) == 3 and len(train_scenes) == 10 and not any(areas)


def test_an_image_with_too_few_labels_to_split_trains_whole(tmp_path):
    from segment_plugin.engine.training import train as module

    rng = np.random.default_rng(0)
    for k in range(3):
        mask = rng.integers(0, 5, (1, 64, 64), dtype=np.uint8)
        if k == 0:
            mask[:] = 255  # ignore …
            mask[0, :10, :10] = 1  # … but 100 pixels
        write_png(tmp_path / f"chip_{k}.png", rng.integers(0, 255, (3, 64, 64), dtype=np.uint8))
        write_png(tmp_path / f"chip_{k}_mask.png", mask)
    params = TrainParams(output=tmp_path / "m", images=(tmp_path,), classes=CLASSES_JSON)
    train_scenes, val_scenes = module._training_data(params, [0, 1, 2, 3, 4], None, [])
    assert [s.name.startswith("chip_0") for s in train_scenes].count(True) == 1
    assert not any(s.name.startswith("chip_0") for s in val_scenes) and len(val_scenes) == 2
    # none can be split: the reason, as before
    for k in (1, 2):
        (tmp_path / f"chip_{k}.png").unlink()
        (tmp_path / f"chip_{k}_mask.png").unlink()
    with pytest.raises(InputError, match="too few labelled pixels for a validation split"):
        module._training_data(params, [0, 1, 2, 3, 4], None, [])


def test_a_fine_tunes_auto_class_weights_are_bounded_and_base_keeps_the_bases():
    """Median-frequency weights of two tiles were background 0.06, road 17.4: bounded for a
    fine-tune, as they are (unbounded) for a new model; a class no label names weighs 1.
    "base" takes the base model's own weights whatever the labels count."""
    from segment_plugin.engine.training import train as module

    base = SimpleNamespace(class_weights=(0.19, 1.0, 1.08, 0.62, 1.24))
    counts = np.array([900_000.0, 30_000, 60_000, 0, 2_000])
    tuned = module._loss_class_weights("auto", counts.copy(), base, Recorder())
    new = module._loss_class_weights("auto", counts.copy(), None, Recorder())
    assert tuned.tolist() == pytest.approx([0.25, 1.5, 0.75, 1.0, 4.0])  # median 45k
    assert new[0] < 0.25 and new[4] > 4.0 and new[3] == 1.0
    kept = module._loss_class_weights("base", counts.copy(), base, Recorder())
    assert kept.tolist() == pytest.approx(base.class_weights)
    unweighted = SimpleNamespace(class_weights=None)
    with pytest.raises(InputError, match="base model's card has no class weights"):
        module._loss_class_weights("base", counts, unweighted, Recorder())
    with pytest.raises(InputError, match="needs --base-model"):
        TrainParams(images=["x"], output="y", class_weights="base")


@pytest.fixture(scope="session")
def building_only_chips(dubai_chips, tmp_path_factory):
    """The Dubai chips as a set labelling buildings only: every other pixel is *other* (0)."""
    root = tmp_path_factory.mktemp("buildings")
    for split in ("train", "val"):
        (root / split).mkdir()
        (root / split / "labels.json").write_text(json.dumps({"labelled": [1], "other": 0}))
        for path in (dubai_chips / split).glob("*.png"):
            data = read_png(path)
            if path.stem.endswith("_mask"):
                data = np.where(data == 1, 1, 0).astype(np.uint8)
            write_png(root / split / path.name, data)
    return root


def test_stretch_trains_and_validates_on_stretched_images_and_is_inherited(
    dubai_chips, tmp_path, capsys, monkeypatch
):
    """--stretch: the card says so, training validates as evaluate does (each image stretched
    by its own percentiles), and a fine-tune of such a model stretches too."""
    from segment_plugin.engine.training import train as training

    flat = tmp_path / "flat"  # the chips at a third of their contrast
    for split in ("train", "val"):
        (flat / split).mkdir(parents=True)
        for png in (dubai_chips / split).glob("*.png"):
            pixels = read_png(png)
            write_png(flat / split / png.name, pixels if "_mask" in png.name else pixels // 3 + 80)
    spans = []
    predict = training._predict_scene

    def spying(model, normalizer, scene, *args):
        spans.append(np.ptp(normalizer(scene.image)))
        return predict(model, normalizer, scene, *args)

    monkeypatch.setattr(training, "_predict_scene", spying)
    result = train(quick(flat, tmp_path, stretch=True, epochs=2))
    assert min(spans) > 0.99  # the model saw each image stretched (a third: 0.33)
    card = ModelPackage.open(tmp_path / "model").card
    assert card.normalization.stretch
    code = cli.main(["evaluate", "--model", str(tmp_path / "model"), "--images",
                     str(flat / "val")])  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["miou"] == pytest.approx(result["val_miou"], abs=2e-3)  # uint8 rounding apart
    train(quick(dubai_chips, tmp_path, base_model=str(tmp_path / "model"), classes=None,
                output=tmp_path / "tuned"))  # fmt: skip
    assert ModelPackage.open(tmp_path / "tuned").card.normalization.stretch
    from conftest import build_tiny_model, tiny_card

    from segment_plugin.engine.models.package import Normalization, save_package

    card = tiny_card(normalization=Normalization("percentile"))
    save_package(build_tiny_model(), card, tmp_path / "pct")
    with pytest.raises(InputError, match="--stretch: the base model 'tiny' stretches each raster"):
        train(quick(dubai_chips, tmp_path, base_model=str(tmp_path / "pct"), classes=None,
                    stretch=True, output=tmp_path / "both"))  # fmt: skip
    assert not (tmp_path / "both").exists()


def test_partial_fine_tune_trains_beside_its_base(building_only_chips, tmp_path, monkeypatch):
    """Partial labels and a base with the same classes: trained beside the base (the teacher of
    the distillation term); the package holds the model alone, and a resumed run trains beside
    the teacher again. Fully labelled chips never build the teacher (no cost)."""
    from segment_plugin.engine.training import train as training

    monkeypatch.setattr(training, "MIN_GAIN", -1.0)  # keep epoch 1 whatever it scores
    reporter = Recorder()
    params = quick(
        building_only_chips, tmp_path, images=(building_only_chips / "train",),
        val_images=building_only_chips / "val", classes=None, base_model="landcover",
    )  # fmt: skip
    result = train(params, reporter)
    assert result["best_epoch"] == 1
    assert any("distillation (weight 1.0)" in m for m in reporter.logs())
    package = ModelPackage.open(tmp_path / "model")
    assert package.card.training["distill"] == 1.0
    model = package.load_model()
    base = resolve_model("landcover").load_model()
    assert model.name == base.name and model.outputs[0].shape[-1] == 5
    assert not all(np.array_equal(a, b) for a, b in zip(model.get_weights(), base.get_weights()))
    reporter = Recorder()
    resumed = train(replace(params, epochs=2, resume=True), reporter)
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert any("distillation" in m for m in reporter.logs())


def test_context_consistency_trains_each_patch_beside_its_centre(
    dubai_chips, building_only_chips, tmp_path
):
    """--consistency: the training graph's last channels are the model on the patch's centre,
    padded back; a fine-tune trains with it beside its teacher (distillation), and resumes; the
    package holds the model alone. Refused where batch normalisation trains."""
    from segment_plugin.engine.models.architectures import build_model
    from segment_plugin.engine.training.context import beside_centre, centre_margin

    assert centre_margin(256, (), 32) == 64 and centre_margin(256, (192, 512), 32) == 64
    assert centre_margin(64, (), 16) == 16
    with pytest.raises(InputError, match=r"patches of \[32\] px are too small"):
        centre_margin(64, (32, 96), 16)
    model = build_model("separable_unet", 3, 5, 8)
    image = np.random.default_rng(0).random((2, 64, 64, 3)).astype(np.float32)
    both = beside_centre(model, model, 16).predict(image, verbose=0)
    assert both.shape == (2, 64, 64, 10)
    np.testing.assert_allclose(both[..., :5], model.predict(image, verbose=0), atol=1e-5)
    centre = model.predict(image[:, 16:-16, 16:-16], verbose=0)
    np.testing.assert_allclose(both[:, 16:-16, 16:-16, 5:], centre, atol=1e-5)
    assert not both[:, :16, :, 5:].any() and not both[:, :, -16:, 5:].any()

    train(quick(dubai_chips, tmp_path, contrast=(0.5, 1.2)))
    base = ModelPackage.open(tmp_path / "model")
    assert base.card.training["contrast"] == [0.5, 1.2]
    for wrong in (dict(), dict(base_model="landcover", train_batchnorm=True)):
        with pytest.raises(InputError, match="consistency needs batch normalisation in inference"):
            quick(dubai_chips, tmp_path, consistency=1.0, **wrong)
    for stretch, gain in ((False, 2.0), (True, 0.5)):
        with pytest.raises(InputError, match="stretch-max-gain goes with --stretch"):
            quick(dubai_chips, tmp_path, stretch=stretch, stretch_max_gain=gain)
    with pytest.raises(InputError, match="too small"):
        train(quick(dubai_chips, tmp_path, consistency=1.0, base_model=str(tmp_path / "model"),
                    patch_sizes=(32, 64), output=tmp_path / "small"))  # fmt: skip

    params = quick(
        building_only_chips, tmp_path, images=(building_only_chips / "train",),
        val_images=building_only_chips / "val", classes=None, base_model=str(tmp_path / "model"),
        output=tmp_path / "tuned", consistency=2.0,
    )  # fmt: skip
    reporter = Recorder()
    result = train(params, reporter)
    assert result["val_miou"] is not None
    logs = reporter.logs()
    assert any("distillation" in m for m in logs)
    assert any("context consistency (weight 2.0)" in m and "16 px" in m for m in logs)
    tuned = ModelPackage.open(tmp_path / "tuned")
    assert tuned.card.training["consistency"] == 2.0
    assert tuned.load_model().outputs[0].shape[-1] == 5
    resumed = train(replace(params, epochs=2, resume=True), Recorder())
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    with pytest.raises(InputError, match="consistency must be 0 or more"):
        quick(dubai_chips, tmp_path, consistency=-1.0)
