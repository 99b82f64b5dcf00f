"""ONNX: our models exported (Deepness' format), Deepness' models run in our pipeline.

Real ONNX Runtime, the real bundled model, the Deepness test models from ../shared/peers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import (
    DEMO,
    ROOT,
    build_tiny_model,
    run_cli,
    scene,
    shared_raster,
    tiny_card,
    write_raster,
)

from segment_plugin.engine.errors import ModelError
from segment_plugin.engine.inference import undo_class_weights
from segment_plugin.engine.models.onnx_export import export_onnx
from segment_plugin.engine.models.onnx_model import CARD_KEY, OnnxModel, read_card
from segment_plugin.engine.models.package import Normalization, save_package
from segment_plugin.engine.models.registry import resolve_model

PEERS = ROOT.parent / "shared" / "peers" / "deepness-test-models"
SEGMENTATION = PEERS / "dummy_segmentation_models"
FOTOMAP = "deepness_dummy_fotomap_small_rgba_2cm.tif"


def _peer(name: str) -> Path:
    path = PEERS / name
    if not path.exists():
        pytest.skip(f"{path} not available (../shared/peers is absent)")
    return path


def assert_same_classes(probs: np.ndarray, reference: np.ndarray, axis: int = -1) -> None:
    """The same argmax wherever the reference's top two classes differ by more than 1e-4 (the
    float noise of two runtimes; elsewhere a tie may go either way, at most 1 pixel in 10⁴)."""
    top2 = np.sort(reference, axis=axis)
    margin = np.take(top2, -1, axis=axis) - np.take(top2, -2, axis=axis)
    same = probs.argmax(axis) == reference.argmax(axis)
    assert same[margin > 1e-4].all()
    assert same.mean() > 0.9999


def _demo_tiles() -> np.ndarray:
    """Two 512 px tiles of the demo orthophoto, as the bundled model's inputs (0..1, NHWC)."""
    if not DEMO.exists():
        pytest.skip("the demo raster is not available")
    with rasterio.open(DEMO) as src:
        image = src.read([1, 2, 3]).astype(np.float32) / 255
    tiles = [image[:, :512, :512], image[:, -512:, -512:]]
    return np.stack(tiles).transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """The bundled model exported for Deepness with the demo's stretch written in (class
    weights undone in the graph)."""
    path = tmp_path_factory.mktemp("onnx") / "landcover.onnx"
    export_onnx(resolve_model("landcover"), path, stretch=_demo_stretch())
    return path


def _demo_stretch():
    """The band percentiles segment stretches the demo by, for the bundled model."""
    from segment_plugin.engine.normalize import raster_stats

    if not DEMO.exists():
        pytest.skip("the demo raster is not available")
    norm = resolve_model("landcover").card.normalization
    with rasterio.open(DEMO) as src:
        return raster_stats(src, (1, 2, 3), norm.low, norm.high)


def test_bundled_model_onnx_matches_keras():
    """The shipped model.onnx is model.keras: probabilities within 1e-4, the same classes."""
    package = resolve_model("landcover")
    assert package.runtimes == ("keras", "onnx") and package.runtime("auto") == "onnx"
    tiles = _demo_tiles()
    keras_probs = np.asarray(package.load_model("keras").predict_on_batch(tiles))
    onnx_probs = package.load_model("onnx").predict_on_batch(tiles)
    assert onnx_probs.shape == keras_probs.shape == (2, 512, 512, 5)
    assert np.abs(onnx_probs - keras_probs).max() < 1e-4
    assert_same_classes(onnx_probs, keras_probs)


def test_export_carries_card_and_deepness_keys(exported):
    """Deepness reads its keys; the class weights are undone in the graph, so our card says none."""
    import onnx

    meta = {p.key: json.loads(p.value) for p in onnx.load(str(exported)).metadata_props}
    bundled = resolve_model("landcover").card
    assert meta["model_type"] == "Segmentor"
    assert meta["class_names"] == {str(i): c.name for i, c in enumerate(bundled.classes)}
    assert meta["tiles_size"] == bundled.tile_size
    assert meta["tiles_overlap"] == 38  # 3/8 of the tile
    assert meta["seg_thresh"] == 0.0  # Deepness' argmax, no threshold
    assert meta["resolution"] == bundled.resolution_m * 100  # Deepness' centimetres
    # the demo's stretch: its 2 % value of each band maps to 0, its 98 % value to 1
    stats = _demo_stretch()
    mean, std = np.asarray(meta["standardization_mean"]), np.asarray(meta["standardization_std"])
    np.testing.assert_allclose((stats.low / 255 - mean) / std, 0, atol=1e-6)
    np.testing.assert_allclose((stats.high / 255 - mean) / std, 1, atol=1e-6)
    card = read_card(exported)
    assert card.name == "landcover" and card.class_weights is None
    assert meta[CARD_KEY]["classes"] == json.loads(bundled.to_json())["classes"]

    # what Deepness feeds it (NCHW, (x/255 - mean)/std) gives segment's probabilities for that
    # input (class weights undone)
    tiles = (_demo_tiles() - mean) / std
    keras_probs = np.asarray(resolve_model("landcover").load_model("keras").predict_on_batch(tiles))
    expected = undo_class_weights(keras_probs, bundled.class_weights)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(exported), providers=["CPUExecutionProvider"])
    image = np.ascontiguousarray(tiles.transpose(0, 3, 1, 2), np.float32)
    out = session.run(None, {"image": image})[0]
    assert out.shape == (2, 5, 512, 512)
    assert np.abs(out.transpose(0, 2, 3, 1) - expected).max() < 1e-4
    assert_same_classes(out, expected.transpose(0, 3, 1, 2), axis=1)


def test_exported_model_added_and_segmented_equals_keras(exported, tmp_path, monkeypatch):
    """models --add the exported file, segment the demo with it: the bundled model's class map.

    Not pixel for pixel: the exported graph undoes the class weights in each tile (a file that
    gives probabilities, for any tool), segment undoes them once the tiles are blended; the two
    differ where overlapping tiles are near a tie (measured: 0.15 % of the demo's pixels).
    """
    monkeypatch.setenv("SEGMENT_PLUGIN_MODELS", str(tmp_path / "models"))
    added = run_cli("models", "--add", str(exported), "--name", "lc-onnx", "--progress", "json")
    assert added.returncode == 0, added.stderr
    assert (tmp_path / "models" / "lc-onnx" / "model.onnx").is_file()
    out = {}
    # the bundled package on ONNX Runtime: Keras' map (test above), without TensorFlow's start-up
    for model, runtime in (("lc-onnx", "auto"), ("landcover", "onnx")):
        out[model] = tmp_path / f"{model}.tif"
        run = run_cli(
            "segment", str(DEMO), "--model", model, "--runtime", runtime,
            "--output", str(out[model]), "--progress", "json",
        )  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr
    with rasterio.open(out["lc-onnx"]) as a, rasterio.open(out["landcover"]) as b:
        agree = (a.read(1) == b.read(1)).mean()
    assert agree > 0.995, agree


@pytest.mark.parametrize(
    "normalization",
    [
        Normalization("percentile", low=2, high=98),
        Normalization("scale", stretch=True),
        Normalization("scale", stretch=True, max_gain=1.5),
    ],
)
def test_whole_raster_stretches_go_to_deepness_only_as_one_rasters(tmp_path, normalization):
    """A whole-raster stretch has no general form in Deepness' keys: refused, unless asked
    without them or with one raster's stretch written in (``--stretch-of``), which Deepness'
    standardisation then reproduces between the percentiles."""
    import onnx

    from segment_plugin.engine.normalize import Normalizer, raster_stats

    card = tiny_card(normalization=normalization)
    package = save_package(build_tiny_model(), card, tmp_path / "pct")
    with pytest.raises(ModelError, match="Deepness cannot express"):
        export_onnx(package, tmp_path / "pct.onnx")
    assert not (tmp_path / "pct.onnx").exists()
    export_onnx(package, tmp_path / "pct.onnx", deepness=False)
    assert read_card(tmp_path / "pct.onnx").normalization == normalization

    pixels = scene(60, 70) // 3 + np.array([60, 20, 90], np.uint8).reshape(3, 1, 1)
    raster = write_raster(tmp_path / "flat.tif", pixels)
    run = run_cli("export-onnx", str(package.path), "--output", str(tmp_path / "d.onnx"),
                  "--stretch-of", str(raster))  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    meta = {p.key: json.loads(p.value) for p in onnx.load(str(tmp_path / "d.onnx")).metadata_props}
    mean = np.asarray(meta["standardization_mean"]).reshape(1, 1, 3)
    std = np.asarray(meta["standardization_std"]).reshape(1, 1, 3)
    theirs = (np.moveaxis(pixels, 0, -1) / 255 - mean) / std  # what Deepness feeds the model
    with rasterio.open(raster) as src:
        stats = raster_stats(src, (1, 2, 3), 2, 98)
    ours = Normalizer(card, stats, "uint8")(pixels)
    inside = (ours > 0) & (ours < 1)  # Deepness does not clip at the percentiles
    assert inside.mean() > 0.9
    np.testing.assert_allclose(theirs[inside], ours[inside], atol=1e-5)
    assert read_card(tmp_path / "d.onnx").normalization == normalization
    refused = run_cli("export-onnx", str(package.path), "--output", str(tmp_path / "n.onnx"),
                      "--stretch-of", str(raster), "--no-deepness")  # fmt: skip
    assert refused.returncode != 0 and "not with --no-deepness" in refused.stderr
    plain = save_package(build_tiny_model(), tiny_card(), tmp_path / "plain")
    refused = run_cli("export-onnx", str(plain.path), "--output", str(tmp_path / "p.onnx"),
                      "--stretch-of", str(raster))  # fmt: skip
    assert refused.returncode != 0 and "model 'tiny' does not stretch" in refused.stderr
    assert not (tmp_path / "n.onnx").exists() and not (tmp_path / "p.onnx").exists()


def test_keras_only_and_onnx_only_packages_say_which_runtime(tiny_model, tmp_path, monkeypatch):
    raster = shared_raster(FOTOMAP)
    run = run_cli(
        "segment", str(raster), "--model", str(tiny_model), "--runtime", "onnx",
        "--output", str(tmp_path / "x.tif"),
    )  # fmt: skip
    assert run.returncode == 2 and "has no model.onnx for --runtime onnx" in run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "x.tif").exists()
    monkeypatch.setenv("SEGMENT_PLUGIN_MODELS", str(tmp_path / "models"))
    assert run_cli("models", "--add", str(SEGMENTATION / "dummy_model.onnx")).returncode == 0
    run = run_cli(
        "segment", str(raster), "--model", "dummy_model", "--runtime", "keras",
        "--output", str(tmp_path / "y.tif"),
    )  # fmt: skip
    assert run.returncode == 2 and "has no model.keras for --runtime keras" in run.stderr


def test_saving_new_weights_removes_the_old_onnx(tmp_path):
    """A package saved again (train or average --overwrite) loses the model.onnx of its old
    weights, which --runtime auto would otherwise run."""
    from segment_plugin.engine.models.onnx_export import add_onnx_to_package
    from segment_plugin.engine.models.package import ModelPackage

    add_onnx_to_package(save_package(build_tiny_model(), tiny_card(), tmp_path / "m"))
    assert ModelPackage.open(tmp_path / "m").runtimes == ("keras", "onnx")
    save_package(build_tiny_model(), tiny_card(), tmp_path / "m")
    assert ModelPackage.open(tmp_path / "m").runtimes == ("keras",)


# --- Deepness' own test models ----------------------------------------------------------------


def _reference(model: Path, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Deepness' classes for a per-pixel model (512 px chunks, x/255, sigmoid ≥ 0.5 or argmax)
    and each pixel's margin from a tie (a float-noise flip is no disagreement)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    bands, height, width = image.shape
    padded = np.zeros((bands, -(-height // 512) * 512, -(-width // 512) * 512), np.float32)
    padded[:, :height, :width] = image / 255
    classes = np.zeros(padded.shape[1:], np.uint8)
    margin = np.zeros(padded.shape[1:], np.float32)
    for row in range(0, padded.shape[1], 512):
        for col in range(0, padded.shape[2], 512):
            chunk = padded[None, :, row : row + 512, col : col + 512]
            out = session.run(None, {session.get_inputs()[0].name: chunk})[0][0]
            where = np.s_[row : row + 512, col : col + 512]
            if out.ndim == 2 or out.shape[0] == 1:
                p = out.reshape(512, 512)
                classes[where], margin[where] = p >= 0.5, np.abs(p - 0.5)
            else:
                top2 = np.sort(out, axis=0)[-2:]
                classes[where], margin[where] = out.argmax(0), top2[1] - top2[0]
    return classes[:height, :width], margin[:height, :width]


@pytest.mark.parametrize(
    ("name", "classes"),
    [
        ("dummy_model.onnx", ["class 0", "class 1", "class 2"]),
        ("one_output_sigmoid_bsx1x512x512.onnx", ["background", "Coffee"]),
        ("one_output_sigmoid_bsx512x512.onnx", ["background", "Coffee"]),
        ("one_output_softmax_bsx2x512x512.onnx", ["class 0", "class 1"]),
        ("two_outputs_softmax_bsx2x512x512.onnx", ["Coffee", "Tea"]),
        ("two_outputs_sigmoid_bsx1x512x512.onnx", ["background", "Coffee"]),
    ],
)
def test_deepness_segmentation_models_segment_like_deepness(name, classes, tmp_path, monkeypatch):
    """Each runs in our tiled, blended pipeline and gives the classes Deepness' rule gives."""
    model = _peer(f"dummy_segmentation_models/{name}")
    raster = shared_raster(FOTOMAP)
    card = read_card(model)
    assert [c.name for c in card.classes] == classes
    assert card.tile_size == 512 and card.bands == ("red", "green", "blue")
    if name.startswith("two_outputs"):
        assert "2 outputs: the class map is made from the first" in card.description
    monkeypatch.setenv("SEGMENT_PLUGIN_MODELS", str(tmp_path / "models"))
    assert run_cli("models", "--add", str(model), "--name", "peer").returncode == 0
    out = tmp_path / "classes.tif"
    run = run_cli("segment", str(raster), "--model", "peer", "--output", str(out))
    assert run.returncode == 0, run.stderr
    with rasterio.open(raster) as src, rasterio.open(out) as result:
        expected, margin = _reference(model, src.read([1, 2, 3]).astype(np.float32))
        same = result.read(1) == expected
    assert same[margin > 1e-3].all()
    assert same.mean() > 0.98


def test_output_smaller_than_input_covers_the_tile_centre(tmp_path):
    """512 → 484 px: the output is the tile's centre (as Deepness places it), margins filled."""
    model = _peer("dummy_segmentation_models/different_output_size_512_to_484.onnx")
    raster = shared_raster(FOTOMAP)
    onnx_model = OnnxModel(model)
    with rasterio.open(raster) as src:
        tile = src.read([1, 2, 3], window=((100, 612), (200, 712))).astype(np.float32) / 255
    probs = onnx_model.predict_on_batch(tile.transpose(1, 2, 0)[None])
    assert probs.shape == (1, 512, 512, 2)
    direct = onnx_model.session.run(None, {onnx_model.input_name: tile[None]})[0][0]
    assert np.allclose(probs[0, 14:-14, 14:-14], direct.transpose(1, 2, 0))
    assert np.allclose(probs[0, :14, 14:-14], probs[0, 14:15, 14:-14])  # nearest predicted row
    out = tmp_path / "classes.tif"
    package = tmp_path / "m"
    package.mkdir()
    (package / "model.onnx").symlink_to(model)
    (package / "model.json").write_text(read_card(model).to_json())
    run = run_cli("segment", str(raster), "--model", str(package), "--output", str(out))
    assert run.returncode == 0, run.stderr
    with rasterio.open(out) as result:
        classes = result.read(1)
    # an interior window whose every pixel a tile's centre covered: the model's own classes there
    assert (classes[114:598, 214:698] == direct.argmax(0)).mean() > 0.98
    small = run_cli("segment", str(raster), "--model", str(package), "--output",
                    str(tmp_path / "small.tif"), "--tile", "256")  # fmt: skip
    assert small.returncode == 2 and "only takes 512×512 tiles, not 256" in small.stderr
    assert not list(tmp_path.glob("small*")) and not list(tmp_path.glob(".small*"))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("dummy_regression_models/dummy_regression_model.onnx", "Deepness Regressor model"),
        ("dummy_recognition_model.onnx", "Deepness Regression model"),
        ("dummy_superresolution_model.onnx", "not a class map of its input"),
    ],
)
def test_models_that_are_not_segmentation_are_refused(name, message, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGMENT_PLUGIN_MODELS", str(tmp_path / "models"))
    run = run_cli("models", "--add", str(_peer(name)))
    assert run.returncode != 0 and message in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())
