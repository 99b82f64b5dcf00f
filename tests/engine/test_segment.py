"""Tiled inference: seams, geometry, nodata, resampling, outputs, on synthetic and real rasters."""

from __future__ import annotations

import json
from xml.etree import ElementTree

import numpy as np
import pytest
import rasterio
from conftest import (
    DEMO,
    LANDCOVER_CLASSES,
    Recorder,
    build_tiny_model,
    scene,
    shared_raster,
    single_pass_classes,
    tiny_card,
    write_raster,
)
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin

from segment_plugin.engine.inference import segment
from segment_plugin.engine.models.package import save_package
from segment_plugin.engine.params import SegmentParams

CODES = {c.code for c in LANDCOVER_CLASSES} | {255}


def run(tmp_path, raster, model, name="classes.tif", **kwargs):
    reporter = Recorder()
    params = SegmentParams(input=raster, output=tmp_path / name, model=str(model), **kwargs)
    result = segment(params, reporter)
    return result, reporter


def read(path):
    with rasterio.open(path) as ds:
        return ds.read(1), ds.profile, ds


def test_tiled_output_matches_single_pass(tmp_path, tiny_model):
    raster = write_raster(tmp_path / "in.tif", scene(150, 200))  # non-square, fits one tile
    reference = single_pass_classes(raster, tiny_model)
    result, _ = run(tmp_path, raster, tiny_model, tile=48, overlap=16, batch=3)
    classes, _, _ = read(result["output"])
    assert result["tiles"] > 12
    agreement = (classes == reference).mean()
    assert agreement >= 0.995, agreement
    assert len(np.unique(classes)) >= 3  # a real, varied prediction, not one class


def test_raster_smaller_than_the_tile_is_one_tile_of_its_size(tmp_path):
    """Padded out to the whole tile, a small raster's map would depend on the tile asked for."""
    model = tmp_path / "tiny32"
    save_package(build_tiny_model(), tiny_card(tile_size=512, input_multiple=32), model)
    raster = write_raster(tmp_path / "in.tif", scene(300, 270))
    maps = []
    for tile in (None, 320, 1024):
        result, reporter = run(
            tmp_path, raster, model, f"tile{tile}.tif", **({"tile": tile} if tile else {})
        )
        assert result["tiles"] == 1
        assert any("1 tiles of 320 px" in line for line in reporter.logs()), reporter.logs()
        maps.append(read(result["output"])[0])
    assert all((m == maps[0]).all() for m in maps[1:])


def test_output_grid_style_and_metadata(tmp_path, tiny_model):
    transform = from_origin(121000.0, 431000.0, 0.25, 0.25)
    raster = write_raster(tmp_path / "in.tif", scene(90, 130), transform=transform)
    result, reporter = run(tmp_path, raster, tiny_model, probabilities=tmp_path / "p.tif")
    classes, profile, _ = read(result["output"])
    with rasterio.open(raster) as src, rasterio.open(result["output"]) as out:
        assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
        assert out.dtypes == ("uint8",) and out.nodata == 255
        # the palette (from the .aux.xml beside it): one entry per class, not 256
        assert len(out.colormap(1)) == 5 and out.colormap(1)[1][:3] == (0xD7, 0x19, 0x1C)
        assert out.descriptions[0] == "land-cover class"
        tags = out.tags()
        assert [c["name"] for c in json.loads(tags["CLASSES"])][:2] == ["background", "building"]
        assert tags["CLASS_3"] == "water" and tags["MODEL"] == "tiny"
    assert set(np.unique(classes)) <= CODES
    band = ElementTree.parse(tmp_path / "classes.tif.aux.xml").find("PAMRasterBand")
    assert [c.text for c in band.find("CategoryNames")] == [c.name for c in LANDCOVER_CLASSES]
    rat = [[f.text for f in row] for row in band.find("GDALRasterAttributeTable").iter("Row")]
    assert rat[2] == ["2", "woodland", "26", "150", "65"]
    qml = (tmp_path / "classes.qml").read_text()
    assert 'type="paletted"' in qml and 'label="woodland"' in qml and "#1a9641" in qml
    with rasterio.open(tmp_path / "p.tif") as probs:
        assert probs.count == 5 and probs.descriptions[1].startswith("p(building)")
        p = probs.read().astype(int)
    assert np.abs(p.sum(axis=0) - 255).max() <= 5  # uint8-scaled probabilities sum to ~255
    winners = np.asarray([c.code for c in LANDCOVER_CLASSES])[p.argmax(axis=0)]
    assert (winners == classes).mean() > 0.97
    assert sum(result["class_pixels"].values()) == 90 * 130
    assert result["class_area_m2"]["background"] == pytest.approx(
        result["class_pixels"]["background"] * 0.0625, abs=0.01
    )
    progress = [f for e, f in reporter.events if e == "progress"]
    assert progress[-1]["fraction"] == 1.0
    assert any("tiles_per_s" in f and "eta_s" in f for f in progress)


def test_nodata_value_becomes_255_and_only_there(tmp_path, tiny_model):
    data = scene(100, 100)
    data[:, 10:40, 20:70] = 0
    raster = write_raster(tmp_path / "in.tif", data, nodata=0)
    result, _ = run(tmp_path, raster, tiny_model)
    classes, _, _ = read(result["output"])
    nodata = (data == 0).all(axis=0)
    assert (classes[nodata] == 255).all()
    assert (classes[~nodata] != 255).all()


def test_alpha_band_masks_like_nodata(tmp_path, tiny_model):
    data = np.concatenate([scene(80, 96), np.full((1, 80, 96), 255, np.uint8)])
    data[3, :, :30] = 0
    interp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    raster = write_raster(tmp_path / "rgba.tif", data, colorinterp=interp)
    result, _ = run(tmp_path, raster, tiny_model)
    classes, _, _ = read(result["output"])
    assert result["bands"] == [1, 2, 3]
    assert (classes[:, :30] == 255).all() and (classes[:, 30:] != 255).all()


def test_resampled_run_writes_on_the_input_grid(tmp_path, tiny_model, tiny_model_half_metre):
    raster = write_raster(tmp_path / "in.tif", scene(160, 120))  # 0.25 m pixels
    result, reporter = run(tmp_path, raster, tiny_model_half_metre)
    assert any("the model works at 0.5 m" in m for m in reporter.logs())
    with rasterio.open(raster) as src, rasterio.open(result["output"]) as out:
        assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
        classes = out.read(1)
    native, _ = run(tmp_path, raster, tiny_model, name="native.tif")
    agreement = (classes == read(native["output"])[0]).mean()
    assert agreement > 0.8, agreement  # same network, half the resolution: mostly the same
    assert not list(tmp_path.glob(".*partial*"))  # working-grid temporaries are gone


def test_geographic_crs_input(tmp_path, tiny_model_half_metre):
    # ~0.34 m × 0.56 m pixels at 52° N: metres are measured on the ellipsoid
    transform = from_origin(4.99, 51.84, 0.000005, 0.000005)
    raster = write_raster(
        tmp_path / "wgs84.tif", scene(96, 80), crs="EPSG:4326", transform=transform
    )
    result, reporter = run(tmp_path, raster, tiny_model_half_metre)
    assert any("input pixels are 0.345×0.556 m" in m for m in reporter.logs()), reporter.logs()
    with rasterio.open(raster) as src, rasterio.open(result["output"]) as out:
        assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
    # textbook WGS84 lengths of one degree at the raster's centre latitude
    a, e2 = 6378137.0, 0.00669437999014
    phi = np.radians(51.84 - 48 * 0.000005)
    w = 1 - e2 * np.sin(phi) ** 2
    metres_per_deg_lon = np.pi / 180 * a * np.cos(phi) / np.sqrt(w)
    metres_per_deg_lat = np.pi / 180 * a * (1 - e2) / w**1.5
    expected = 96 * 80 * (0.000005 * metres_per_deg_lon) * (0.000005 * metres_per_deg_lat)
    assert sum(result["class_area_m2"].values()) == pytest.approx(expected, rel=0.002)


def test_no_crs_is_allowed_with_a_warning(tmp_path, tiny_model):
    raster = write_raster(tmp_path / "plain.tif", scene(64, 64), crs=None)
    result, reporter = run(tmp_path, raster, tiny_model)
    assert any("no CRS" in m for m in reporter.logs())
    with rasterio.open(result["output"]) as out:
        assert out.crs is None and out.shape == (64, 64)
    assert result["class_area_m2"] is None


def test_tta_is_flip_equivariant():
    """The flip average answers a flipped tile with the flipped answer; one model pass does not."""
    from conftest import build_tiny_model

    from segment_plugin.engine.inference import predict_tiles

    model = build_tiny_model()
    tiles = (np.moveaxis(scene(48, 48), 0, -1)[None] / 255.0).astype(np.float32)
    for axis in (1, 2):
        flipped = np.flip(tiles, axis)
        tta = predict_tiles(model, tiles, tta=True)
        assert np.allclose(predict_tiles(model, flipped, tta=True), np.flip(tta, axis), atol=1e-5)
        plain = predict_tiles(model, tiles)
        assert not np.allclose(predict_tiles(model, flipped), np.flip(plain, axis), atol=1e-3)


def test_undo_class_weights_divides_and_renormalises():
    from segment_plugin.engine.inference import undo_class_weights

    probs = np.array([[0.5, 0.5], [0.8, 0.2]], np.float32)
    assert undo_class_weights(probs, None) is probs
    assert np.allclose(undo_class_weights(probs, (2.0, 1.0)), [[1 / 3, 2 / 3], [2 / 3, 1 / 3]])
    assert np.allclose(undo_class_weights(probs, (3.0, 3.0)), probs)  # only ratios matter
    rows = probs.copy()  # in place, as segment does on its blended rows
    assert undo_class_weights(rows, (2.0, 1.0), out=rows) is rows
    assert np.allclose(rows, [[1 / 3, 2 / 3], [2 / 3, 1 / 3]])
    # for the class alone: divided by the weights, not renormalised; the same argmax
    rng = np.random.default_rng(0)
    many = rng.dirichlet(np.ones(5), size=(40, 40)).astype(np.float32)
    weights = (0.19, 1.0, 1.08, 0.62, 1.24)
    raw = undo_class_weights(many.copy(), weights, renormalise=False)
    assert np.allclose(raw, many / np.float32(weights))
    assert np.array_equal(raw.argmax(-1), undo_class_weights(many, weights).argmax(-1))


def test_segment_undoes_the_cards_class_weights(tmp_path):
    """A class the loss weighted heavily is called less, the others' order is untouched."""
    from conftest import build_tiny_model, tiny_card

    from segment_plugin.engine.models.package import save_package

    raster = write_raster(tmp_path / "in.tif", scene(60, 60))  # one 64 px tile: no blending
    save_package(build_tiny_model(), tiny_card(), tmp_path / "plain")
    plain = read(run(tmp_path, raster, tmp_path / "plain", name="plain.tif")[0]["output"])[0]
    codes, counts = np.unique(plain, return_counts=True)
    common = int(codes[counts.argmax()])
    weights = tuple(1e4 if c.code == common else 1.0 for c in LANDCOVER_CLASSES)
    save_package(build_tiny_model(), tiny_card(class_weights=weights), tmp_path / "weighted")
    weighted = read(run(tmp_path, raster, tmp_path / "weighted", name="w.tif")[0]["output"])[0]
    assert counts.max() > 0.2 * plain.size and (weighted == common).mean() < 0.01
    others = plain != common
    assert np.array_equal(weighted[others], plain[others])
    kept, _ = run(tmp_path, raster, tmp_path / "weighted", name="k.tif", keep_class_weights=True)
    assert np.array_equal(read(kept["output"])[0], plain)  # --keep-class-weights: as trained


def test_tta_agrees_with_plain_inference(tmp_path, tiny_model):
    raster = write_raster(tmp_path / "in.tif", scene(100, 90))
    plain, _ = run(tmp_path, raster, tiny_model, name="plain.tif")
    tta, _ = run(tmp_path, raster, tiny_model, name="tta.tif", tta=True)
    assert (read(plain["output"])[0] == read(tta["output"])[0]).mean() > 0.9


def test_bands_by_description_and_uint16_restretch(tmp_path, tiny_model):
    rgb = scene(70, 70).astype(np.uint16) * 8
    nir = np.full((1, 70, 70), 3000, np.uint16)
    data = np.concatenate([rgb[2:3], rgb[1:2], rgb[0:1], nir])  # B, G, R, NIR
    raster = write_raster(tmp_path / "bgrn.tif", data, descriptions=["blue", "green", "red", "nir"])
    result, reporter = run(tmp_path, raster, tiny_model)
    assert result["bands"] == [3, 2, 1]
    assert any("is uint16 but model 'tiny' was trained on uint8" in m for m in reporter.logs())
    reference = write_raster(tmp_path / "rgb8.tif", (rgb // 8).astype(np.uint8))
    ref, _ = run(tmp_path, reference, tiny_model, name="ref.tif")
    # the same picture as uint8 RGB gives mostly the same classes after the whole-raster stretch
    assert (read(result["output"])[0] == read(ref["output"])[0]).mean() > 0.6


@pytest.mark.parametrize(
    "name", ["demo_nl_gorinchem_rgb_25cm.tif", "riotiler_pix4d_rgba_nodata_35cm.tif"]
)
def test_real_rasters_keep_their_grid(tmp_path, tiny_model, name):
    raster = shared_raster(name)
    result, _ = run(tmp_path, raster, tiny_model, tile=128, batch=8)
    with rasterio.open(raster) as src, rasterio.open(result["output"]) as out:
        assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
        mask = src.dataset_mask()
        classes = out.read(1)
    assert ((classes == 255) == (mask == 0)).all()
    assert result["mpx_per_s"] > 0


def test_spacenet_uint16_bgrn_with_explicit_bands(tmp_path, tiny_model):
    raster = shared_raster("spacenet_rotterdam_ms_bgrn_1m_uint16.tif")
    result, reporter = run(tmp_path, raster, tiny_model, bands=(3, 2, 1))
    assert result["bands"] == [3, 2, 1]
    assert any("uint16" in m for m in reporter.logs())
    assert read(result["output"])[0].shape == (300, 300)


def test_params_round_trip_and_are_reported(tmp_path, tiny_model):
    params = SegmentParams(input="a.tif", output="b.tif", bands=[3, 2, 1], tile=128, tta=True)
    again = SegmentParams.from_json(params.to_json())
    assert again == params and again.bands == (3, 2, 1)
    if DEMO.exists():
        result, _ = run(tmp_path, DEMO, tiny_model, tile=256)
        assert result["params"]["tile"] == 256 and result["params"]["job"] == "segment"


def test_vrt_input(tmp_path, tiny_model):
    source = write_raster(tmp_path / "src.tif", scene(80, 60))
    bands = "".join(
        f"""<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource>
        <SourceFilename relativeToVRT="1">src.tif</SourceFilename><SourceBand>{b}</SourceBand>
        </SimpleSource></VRTRasterBand>"""
        for b in (1, 2, 3)
    )
    with rasterio.open(source) as src:
        gt = ", ".join(str(v) for v in src.transform.to_gdal())
        srs = src.crs.to_wkt()
    vrt = tmp_path / "mosaic.vrt"
    vrt.write_text(
        f'<VRTDataset rasterXSize="60" rasterYSize="80"><SRS>{srs}</SRS>'
        f"<GeoTransform>{gt}</GeoTransform>{bands}</VRTDataset>"
    )
    from_vrt, _ = run(tmp_path, vrt, tiny_model, name="vrt.tif")
    from_tif, _ = run(tmp_path, source, tiny_model, name="tif.tif")
    assert (read(from_vrt["output"])[0] == read(from_tif["output"])[0]).all()


@pytest.mark.parametrize("dtype", ["int16", "float32"])
def test_other_dtypes_are_stretched(tmp_path, tiny_model, dtype):
    data = (scene(64, 80).astype(np.float32) * 3.7 - 200).astype(dtype)
    raster = write_raster(tmp_path / f"{dtype}.tif", data)
    result, reporter = run(tmp_path, raster, tiny_model)
    assert any(f"the input is {dtype}" in m for m in reporter.logs())
    classes = read(result["output"])[0]
    assert (classes != 255).all() and len(np.unique(classes)) >= 2


def test_vector_option_writes_polygons_of_the_classes(tmp_path, tiny_model):
    import geopandas as gpd

    raster = write_raster(tmp_path / "in.tif", scene(96, 96))
    result, reporter = run(tmp_path, raster, tiny_model, vector=tmp_path / "classes.gpkg")
    polygons = gpd.read_file(tmp_path / "classes.gpkg")
    assert len(polygons) == result["vector"]["features"] > 0
    by_class = polygons.groupby("class").area_m2.sum()
    for name, area in result["class_area_m2"].items():
        assert by_class.get(name, 0.0) == pytest.approx(area, abs=0.01)
    fractions = [f["fraction"] for e, f in reporter.events if e == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0  # one bar for both phases


def test_vector_output_is_checked_before_the_run(tmp_path, tiny_model):
    from segment_plugin.engine.errors import OutputError

    raster = write_raster(tmp_path / "in.tif", scene(64, 64))
    (tmp_path / "p.shp").write_text("old")
    with pytest.raises(OutputError, match="exists"):
        run(tmp_path, raster, tiny_model, vector=tmp_path / "p.shp")
    assert not (tmp_path / "classes.tif").exists()


def test_mixed_precision_copy_keeps_weights_and_predictions():
    """What --device gpu runs: float16 compute, float32 probabilities, same answer."""
    from conftest import build_tiny_model

    from segment_plugin.engine.inference import mixed_precision_copy

    model = build_tiny_model()
    mixed = mixed_precision_copy(model)
    assert mixed.layers[1].compute_dtype == "float16"
    assert mixed.layers[-1].compute_dtype == "float32"
    x = np.random.default_rng(0).random((2, 32, 32, 3)).astype("float32")
    a, b = model.predict_on_batch(x), np.asarray(mixed.predict_on_batch(x))
    assert b.dtype == np.float32
    assert np.abs(a - b).max() < 5e-3
    assert (a.argmax(-1) == b.argmax(-1)).mean() > 0.98


@pytest.mark.parametrize(
    "normalization",
    [
        {"method": "percentile", "low": 2.0, "high": 98.0},
        {"method": "meanstd", "mean": [120.0, 120.0, 120.0], "std": [60.0, 60.0, 60.0]},
        {"method": "scale", "stretch": True},
    ],
)
def test_other_normalizations(tmp_path, normalization):
    """Percentile stretch (whole-raster statistics: tiled equals single pass) and mean/std."""
    from conftest import build_tiny_model, tiny_card

    from segment_plugin.engine.models.package import Normalization, save_package

    card = tiny_card(normalization=Normalization(**normalization))
    save_package(build_tiny_model(), card, tmp_path / "m")
    raster = write_raster(tmp_path / "in.tif", scene(120, 100) // 2 + 40)  # low-contrast input
    result, _ = run(tmp_path, raster, tmp_path / "m", tile=32, overlap=8)
    classes = read(result["output"])[0]
    reference = single_pass_classes(raster, tmp_path / "m")
    assert (classes == reference).mean() >= 0.995


def test_stretch_spreads_a_low_contrast_raster_as_training_stretches_each_image():
    """``stretch``: each band's 2-98 % percentiles of the whole raster go to 0..255 before the
    scale; training's once-per-image stretch (rounded to uint8) gives the same input."""
    from conftest import tiny_card

    from segment_plugin.engine.models.package import Normalization
    from segment_plugin.engine.normalize import Normalizer, band_stats, stretched_image

    ramp = np.linspace(100, 150, 101)  # a low-contrast band: percentiles 2 and 98 are 101, 149
    image = np.stack([np.tile(ramp, (20, 1)), np.tile(ramp, (20, 1)) - 50, np.tile(ramp, (20, 1))])
    image = np.rint(image).astype(np.uint8)
    stats = band_stats(image.reshape(3, -1), 2, 98)
    stretch = Normalizer(tiny_card(normalization=Normalization(stretch=True)), stats, "uint8")
    x = stretch(image)
    assert stretch.warning is None  # uint8 as trained: nothing to warn about
    assert x[0, 50, 0] == pytest.approx(0.5) and x[0, 74, 0] == pytest.approx((137 - 101) / 48)
    assert x[0, 0, 0] == 0.0 and x[0, 100, 0] == 1.0 and x[0, 99, 0] == 1.0  # clipped
    np.testing.assert_allclose(x[..., 1], x[..., 0], atol=1e-6)  # an offset band alike
    plain = Normalizer(tiny_card(), stats, "uint8")
    np.testing.assert_allclose(plain(image)[0, 50, 0], 125 / 255)
    trained = plain(stretched_image(image, stats))
    assert np.abs(trained - x).max() <= 0.5 / 255 + 1e-6


def test_a_stretch_limited_in_gain_widens_a_narrow_band_about_its_middle():
    """``max_gain``: a band spanning 48 of 255 (a gain of 5.3) is stretched 2× about its middle,
    in segment as in training; a uint16 raster into a uint8 model is still stretched in full."""
    from conftest import tiny_card

    from segment_plugin.engine.models.package import Normalization
    from segment_plugin.engine.normalize import (
        Normalizer,
        band_stats,
        gain_limited,
        stretched_image,
    )

    ramp = np.tile(np.linspace(100, 150, 101), (3, 20, 1))
    image = np.rint(ramp).astype(np.uint8)
    stats = band_stats(image.reshape(3, -1), 2, 98)  # 101 .. 149, middle 125
    norm = Normalization(stretch=True, max_gain=2.0)
    limited = Normalizer(tiny_card(normalization=norm), stats, "uint8")
    x = limited(image)
    assert x[0, 50, 0] == pytest.approx(0.5) and x[0, 74, 0] == pytest.approx(
        2 * (137 - 125) / 255 + 0.5
    )
    assert x[0, 0, 0] == pytest.approx(2 * (100 - 125) / 255 + 0.5)  # not clipped: inside the range
    trained = Normalizer(tiny_card(), stats, "uint8")(
        stretched_image(image, gain_limited(stats, norm, "uint8"))
    )
    assert np.abs(trained - x).max() <= 0.5 / 255 + 1e-6
    wide = (ramp * 200).astype(np.uint16)
    full = Normalizer(
        tiny_card(normalization=norm), band_stats(wide.reshape(3, -1), 2, 98), "uint16"
    )
    assert full(wide)[0, 0, 0] == 0.0 and full(wide)[0, -1, 0] == 1.0


def test_preview_shows_image_and_classes_side_by_side(tmp_path, tiny_model):
    from segment_plugin.engine.preview import GAP, write_preview

    image = scene(120, 90)
    raster = write_raster(tmp_path / "in.tif", image)
    result, _ = run(tmp_path, raster, tiny_model)
    png = write_preview(raster, tmp_path / "classes.tif", tmp_path / "preview.png", max_side=60)
    with rasterio.open(png) as picture:
        assert (picture.width, picture.height) == (45 + GAP + 45, 60)
        left, right = picture.read()[:, :, :45], picture.read()[:, :, 45 + GAP :]
    colours = {tuple(int(v) for v in c.rgb()) for c in LANDCOVER_CLASSES}
    assert {tuple(int(v) for v in px) for px in right.reshape(3, -1).T} <= colours
    assert np.abs(left.astype(int) - image[:, ::2, ::2].astype(int)).mean() < 12  # decimated image
