"""Class raster → polygons: exact areas, shared edges, strips = whole, cleaning, formats, errors."""

from __future__ import annotations

import json
import sys

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from conftest import LANDCOVER_CLASSES, cancel_mid_run, write_raster
from rasterio.features import shapes
from rasterio.transform import from_origin

from segment_plugin.engine import cli
from segment_plugin.engine.params import VectorizeParams
from segment_plugin.engine.polygonize import polygonize
from segment_plugin.engine.progress import Reporter
from segment_plugin.engine.vectorize import open_class_raster, vectorize

CLASSES_TAG = json.dumps(
    [{"code": c.code, "name": c.name, "color": c.color} for c in LANDCOVER_CLASSES]
)
PIXEL = 0.5  # metres


def class_scene(height=120, width=150, seed=3, nodata_box=True) -> np.ndarray:
    """Blocky land cover with speckle, a ring with a hole, and a nodata corner."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 5, (height // 10 + 1, width // 10 + 1))
    data = np.kron(coarse, np.ones((10, 10), int))[:height, :width].astype(np.uint8)
    speckle = rng.random((height, width)) < 0.03
    data[speckle] = rng.integers(0, 5, speckle.sum())
    data[30:60, 40:80] = 3  # water ring ...
    data[40:50, 55:65] = 1  # ... with a building inside: a hole
    if nodata_box:
        data[:15, -25:] = 255
    return data


def class_raster(path, data, crs="EPSG:28992", transform=None, nodata=255):
    path = write_raster(
        path,
        data[None],
        crs=crs,
        nodata=nodata,
        transform=transform or from_origin(150000.0, 420000.0, PIXEL, PIXEL),
    )
    with rasterio.open(path, "r+") as ds:
        ds.update_tags(CLASSES=CLASSES_TAG)
    return path


def run(tmp_path, raster, name="out.gpkg", **kwargs):
    params = VectorizeParams(input=raster, output=tmp_path / name, **kwargs)
    return vectorize(params, Reporter()), gpd.read_file(tmp_path / name)


def footprint(data, nodata=255):
    valid = (data != nodata).astype(np.uint8)
    transform = from_origin(150000.0, 420000.0, PIXEL, PIXEL)
    parts = [
        shapely.geometry.shape(g) for g, v in shapes(valid, mask=valid == 1, transform=transform)
    ]
    return shapely.union_all(parts)


def test_areas_equal_pixel_counts_and_edges_are_shared(tmp_path):
    data = class_scene()
    result, frame = run(tmp_path, class_raster(tmp_path / "c.tif", data))
    assert frame.geometry.is_valid.all()
    assert set(frame.columns) >= {"class_id", "class", "area_m2", "perim_m", "geometry"}
    for code in range(5):
        expected = (data == code).sum() * PIXEL * PIXEL
        got = frame.loc[frame.class_id == code].geometry.area.sum()
        assert got == pytest.approx(expected, rel=1e-4)
        assert frame.loc[frame.class_id == code, "area_m2"].sum() == pytest.approx(
            expected, rel=1e-4
        )
    union = shapely.union_all(frame.geometry.values)
    assert frame.geometry.area.sum() == pytest.approx(union.area, rel=1e-9)  # no overlaps
    assert union.symmetric_difference(footprint(data)).area < 1e-6  # no gaps, no nodata
    assert (frame["class"][frame.class_id == 3] == "water").all()
    assert result["features"] == len(frame)


def test_holes_are_preserved(tmp_path):
    data = class_scene()
    _, frame = run(tmp_path, class_raster(tmp_path / "c.tif", data))
    ring = frame[
        (frame.class_id == 3)
        & frame.geometry.contains(shapely.Point(150000 + 60 * PIXEL, 420000 - 45 * PIXEL))
    ]
    assert ring.empty  # the building inside is not water ...
    water = frame[frame.class_id == 3]
    assert any(len(g.interiors) > 0 for g in water.geometry)  # ... it is a hole in the water


def normal_form(batches) -> list[tuple[int, bytes]]:
    """Polygons as sorted (class, WKB of the normalised geometry): equal only if identical."""
    codes = np.concatenate([c for c, _ in batches])
    polygons = shapely.normalize(np.concatenate([p for _, p in batches]))
    return sorted(zip(codes.tolist(), shapely.to_wkb(polygons)))


def polygons_by_strips(raster, strip_rows, selected=None):
    with open_class_raster(raster) as src:
        return normal_form(list(polygonize(src, selected, Reporter(), strip_rows=strip_rows)))


@pytest.mark.parametrize("strip_rows", [1, 7, 32])
def test_strips_give_the_same_polygons_as_the_whole_raster(tmp_path, strip_rows):
    data = class_scene()
    raster = class_raster(tmp_path / "c.tif", data)
    whole = polygons_by_strips(raster, data.shape[0])
    assert polygons_by_strips(raster, strip_rows) == whole
    assert all(shapely.is_valid(shapely.from_wkb([w for _, w in whole])))


@pytest.mark.parametrize("classes,strip_rows", [(2, 1), (2, 5), (3, 2), (3, 9)])
def test_stitching_noise_gives_the_same_polygons_as_the_whole_raster(tmp_path, classes, strip_rows):
    """Pixel noise: regions that touch themselves at corners across borders, holes in holes."""
    data = np.random.default_rng(classes * 10 + strip_rows).integers(0, classes, (90, 70))
    raster = class_raster(tmp_path / "n.tif", data.astype(np.uint8))
    whole = polygons_by_strips(raster, data.shape[0])
    stitched = polygons_by_strips(raster, strip_rows)
    assert stitched == whole
    assert all(shapely.is_valid(shapely.from_wkb([w for _, w in stitched])))


def test_stitching_a_selected_class_matches_the_whole_raster(tmp_path):
    data = class_scene()
    raster = class_raster(tmp_path / "c.tif", data)
    selected = np.asarray([2, 3])
    assert polygons_by_strips(raster, 6, selected) == polygons_by_strips(
        raster, data.shape[0], selected
    )


def test_a_region_through_every_strip_keeps_its_holes(tmp_path):
    """A comb of woodland joined at the bottom, full of holes: one polygon, built once."""
    data = np.full((64, 64), 2, np.uint8)
    data[4:60:4, 4:60:4] = 1  # 196 one-pixel buildings: holes
    data[:56, 20] = 0  # a background slit from the top: the region wraps around it
    raster = class_raster(tmp_path / "comb.tif", data)
    stitched = polygons_by_strips(raster, 3)
    woodland = [shapely.from_wkb(w) for code, w in stitched if code == 2]
    assert len(woodland) == 1
    assert len(woodland[0].interiors) == 196 - 14  # the slit cuts through one column of them
    assert woodland[0].area == (data == 2).sum()
    assert stitched == polygons_by_strips(raster, 64)


def polygons_by_ranges(raster, tmp_path, cuts, strip_rows):
    """What the Dask path does, without Dask: each range of rows a task writing its own file,
    the regions at the ranges' edges joined by one RegionMerger."""
    from segment_plugin.engine import polygonize as module
    from segment_plugin.engine.vectorize import VectorizePlan, polygonize_rows

    plan = VectorizePlan(str(raster), None, {}, "parts")
    bounds = list(zip(cuts[:-1], cuts[1:]))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "strip_rows_for", lambda width: strip_rows)
        results = [polygonize_rows(plan, rows, str(tmp_path / f"{k}.gpkg"))
                   for k, rows in enumerate(bounds)]  # fmt: skip
    batches = []

    def to_pixels(xy):  # exact: PIXEL is 2⁻¹; + 0.0 turns -0.0 into 0.0
        return (xy - [150000.0, 420000.0]) / [PIXEL, -PIXEL] + 0.0

    for k, (written, _) in enumerate(results):
        if written.features:
            part = gpd.read_file(tmp_path / f"{k}.gpkg")
            assert len(part) == written.features
            pixels = shapely.transform(part.geometry.values, to_pixels)
            batches.append((part.class_id.to_numpy(), np.asarray(pixels)))
    merger = module.RegionMerger(cuts[-1])
    for rows, (_, edges) in zip(bounds, results):
        batches.extend(merger.add(*rows, *edges))
    assert len(merger.open_regions()[0]) == 0
    return normal_form(batches)


@pytest.mark.parametrize(
    "cuts,strip_rows",
    [((0, 40, 80, 120), 13), ((0, 1, 2, 60, 119, 120), 5), ((0, 33, 120), 120)],
)
def test_ranges_polygonised_apart_and_joined_equal_the_whole_raster(tmp_path, cuts, strip_rows):
    data = class_scene()
    raster = class_raster(tmp_path / "c.tif", data)
    assert polygons_by_ranges(raster, tmp_path, cuts, strip_rows) == polygons_by_strips(raster, 120)


def test_ranges_of_noise_joined_equal_the_whole_raster(tmp_path):
    """Regions that wind through several ranges and back, touching themselves at corners."""
    data = np.random.default_rng(7).integers(0, 2, (90, 70)).astype(np.uint8)
    raster = class_raster(tmp_path / "n.tif", data, nodata=None)
    cuts = (0, 10, 11, 30, 52, 90)
    assert polygons_by_ranges(raster, tmp_path, cuts, 4) == polygons_by_strips(raster, 90)


def test_geographic_raster_gives_metres(tmp_path):
    data = class_scene(60, 80, nodata_box=False)
    transform = from_origin(4.99, 51.84, 0.00001, 0.00001)
    result, frame = run(
        tmp_path, class_raster(tmp_path / "g.tif", data, crs="EPSG:4326", transform=transform)
    )
    a, e2 = 6378137.0, 0.00669437999014
    phi = np.radians(51.84 - 30 * 0.00001)
    w = 1 - e2 * np.sin(phi) ** 2
    pixel_area = (0.00001 * np.pi / 180) ** 2 * a * np.cos(phi) / np.sqrt(w) * a * (1 - e2) / w**1.5
    assert frame.area_m2.sum() == pytest.approx(60 * 80 * pixel_area, rel=1e-3)


def test_geopackage_is_version_1_2_for_qgis_3_22(tmp_path):
    import sqlite3

    run(tmp_path, class_raster(tmp_path / "c.tif", class_scene()), name="p.gpkg")
    with sqlite3.connect(tmp_path / "p.gpkg") as db:
        assert db.execute("pragma user_version").fetchone()[0] == 10200  # 1.4 warns in 3.22


def test_shapefile_with_prj_cpg_and_short_fields(tmp_path):
    data = class_scene()
    result, frame = run(tmp_path, class_raster(tmp_path / "c.tif", data), name="out.shp")
    for ext in (".shp", ".shx", ".dbf", ".prj", ".cpg"):
        assert (tmp_path / f"out{ext}").exists(), ext
    assert (tmp_path / "out.cpg").read_text().strip().upper() in ("UTF-8", "UTF8")
    assert all(len(c) <= 10 for c in frame.columns)
    assert frame.crs.to_epsg() == 28992
    assert sorted(frame["class"].unique()) == sorted({c.name for c in LANDCOVER_CLASSES})
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


def test_geopackage_layer_name(tmp_path):
    _, _ = run(
        tmp_path, class_raster(tmp_path / "c.tif", class_scene()), name="o.gpkg", layer="landcover"
    )
    import pyogrio

    assert [row[0] for row in pyogrio.list_layers(tmp_path / "o.gpkg")] == ["landcover"]


def test_class_selection(tmp_path):
    _, frame = run(tmp_path, class_raster(tmp_path / "c.tif", class_scene()), classes=(1, 3))
    assert set(frame.class_id) == {1, 3}


def test_min_area_sieves_small_regions_and_keeps_the_total(tmp_path):
    data = class_scene(nodata_box=False)
    raster = class_raster(tmp_path / "c.tif", data)
    _, plain = run(tmp_path, raster, name="plain.gpkg")
    _, sieved = run(tmp_path, raster, name="sieved.gpkg", min_area=4.0)  # 16 pixels
    assert sieved.geometry.area.min() >= 4.0
    assert len(sieved) < len(plain)
    assert sieved.geometry.area.sum() == pytest.approx(data.size * PIXEL * PIXEL)


def test_sieve_by_strips_matches_a_whole_raster_sieve(tmp_path, monkeypatch):
    from rasterio.features import sieve

    from segment_plugin.engine import vectorize as module

    data = class_scene(nodata_box=False)
    expected = sieve(data, size=16, connectivity=4)
    monkeypatch.setattr(module, "STRIP_ROWS", 16)
    raster = class_raster(tmp_path / "c.tif", data)
    with open_class_raster(raster) as src:
        params = VectorizeParams(input=raster, output=tmp_path / "x.gpkg", min_area=4.0)
        cleaned = module._cleaned_copy(src, params, tmp_path / "clean.tif", Reporter())
    with rasterio.open(cleaned) as ds:
        assert (ds.read(1) == expected).mean() > 0.999


def test_smoothing_removes_speckle(tmp_path):
    data = class_scene(nodata_box=False)
    raster = class_raster(tmp_path / "c.tif", data)
    _, plain = run(tmp_path, raster, name="plain.gpkg")
    _, smooth = run(tmp_path, raster, name="smooth.gpkg", smooth=True)
    assert len(smooth) < 0.6 * len(plain)
    assert smooth.geometry.area.sum() == pytest.approx(data.size * PIXEL * PIXEL)


def test_simplify_keeps_a_clean_coverage(tmp_path):
    data = class_scene()
    raster = class_raster(tmp_path / "c.tif", data)
    _, plain = run(tmp_path, raster, name="plain.gpkg", smooth=True)
    _, simple = run(tmp_path, raster, name="simple.gpkg", smooth=True, simplify=1.0)
    assert simple.geometry.is_valid.all() and len(simple) == len(plain)
    vertices = lambda f: shapely.get_num_coordinates(f.geometry.values).sum()  # noqa: E731
    assert vertices(simple) < vertices(plain)
    union = shapely.union_all(simple.geometry.values)
    assert simple.geometry.area.sum() == pytest.approx(union.area, rel=1e-6)  # no overlaps
    holes = union.area - shapely.union_all(plain.geometry.values).area
    assert abs(holes) < 0.02 * union.area  # outer boundary moves a little, no gaps open inside
    assert all(len(p.interiors) == 0 for p in getattr(union, "geoms", [union]) if p.area > 50)


def vectorize_cli(capsys, *args):
    code = cli.main(["vectorize", *map(str, args)])
    return code, [
        line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")
    ]


def test_min_area_larger_than_the_raster_is_refused(capsys, tmp_path):
    raster = class_raster(tmp_path / "c.tif", class_scene())  # 120×150 px of 0.5 m: 4500 m²
    code = cli.main(
        ["vectorize", str(raster), "--output", str(tmp_path / "p.gpkg")] + ["--min-area", "5000"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "more than the whole raster (4500 m²)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.tif"]


def test_float_raster_is_refused(capsys, tmp_path):
    raster = write_raster(
        tmp_path / "f.tif", np.random.default_rng(0).random((1, 20, 20)).astype("float32")
    )
    code, errors = vectorize_cli(capsys, raster, "--output", tmp_path / "o.shp")
    assert code == 2 and errors == [
        f"error: {raster} is not a class raster (float32 values); "
        "a class raster has one band of integer codes"
    ]


def test_empty_raster_is_refused_and_nothing_is_left(capsys, tmp_path):
    raster = class_raster(tmp_path / "e.tif", np.full((20, 20), 255, np.uint8))
    code, errors = vectorize_cli(capsys, raster, "--output", tmp_path / "o.shp")
    assert code == 2 and "has no pixels with a class" in errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.tif"]


def test_unknown_class_ids(capsys, tmp_path):
    raster = class_raster(tmp_path / "c.tif", class_scene())
    code, errors = vectorize_cli(
        capsys, raster, "--output", tmp_path / "o.gpkg", "--classes", "1,9"
    )
    assert (
        code == 2
        and "unknown class id(s) [9]; this raster has 0 background, 1 building" in errors[0]
    )


def test_existing_output_and_unwritable_folder(capsys, tmp_path):
    raster = class_raster(tmp_path / "c.tif", class_scene())
    (tmp_path / "o.shp").write_text("old")
    code, errors = vectorize_cli(capsys, raster, "--output", tmp_path / "o.shp")
    assert code == 2 and "exists; pass --overwrite" in errors[0]
    assert (tmp_path / "o.shp").read_text() == "old"
    code, errors = vectorize_cli(capsys, raster, "--output", "/proc/o.gpkg")
    assert code == 2 and "cannot write in /proc" in errors[0]
    code, _ = vectorize_cli(capsys, raster, "--output", tmp_path / "o.shp", "--overwrite")
    assert code == 0 and len(gpd.read_file(tmp_path / "o.shp")) > 10


def test_wrong_output_format(capsys, tmp_path):
    raster = class_raster(tmp_path / "c.tif", class_scene())
    code, errors = vectorize_cli(capsys, raster, "--output", tmp_path / "o.kml")
    assert code == 2 and "must be a .shp or .gpkg file" in errors[0]


def test_shapefile_size_warning(tmp_path, monkeypatch):
    from segment_plugin.engine import vectorize as module

    class Logs(Reporter):
        def __init__(self):
            super().__init__()
            self.warnings = []

        def emit(self, event, **fields):
            if event == "log" and fields["level"] == "warning":
                self.warnings.append(fields["message"])

    monkeypatch.setattr(module, "SHAPEFILE_LIMIT", 10_000)
    raster = class_raster(tmp_path / "c.tif", class_scene())
    logs = Logs()
    vectorize(VectorizeParams(input=raster, output=tmp_path / "o.shp"), logs)
    assert len(logs.warnings) == 1
    assert "passes 2 GB" in logs.warnings[0] and "GeoPackage (.gpkg)" in logs.warnings[0]


def test_sigterm_is_honoured_within_seconds_and_leaves_nothing(tmp_path):
    """What QGIS's Cancel sends, on a fragmented map (pixel noise: ~1.5 million polygons)."""
    data = np.random.default_rng(5).integers(0, 3, (1500, 3000)).astype(np.uint8)
    raster = class_raster(tmp_path / "noise.tif", data)
    command = [sys.executable, "-m", "segment_plugin.engine", "vectorize", str(raster)]
    command += ["--output", str(tmp_path / "out.gpkg"), "--progress", "json"]
    code, seconds, rest = cancel_mid_run(command)
    assert code == 130 and seconds < 5
    assert rest[-1] == {"event": "end", "status": "cancelled", "exit_code": 130}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["noise.tif"]
