"""`make bench`, vectorising: ours vs gdal_polygonize.py, wall time and peak RSS.

Class rasters made from real land cover, each a real map laid edge to edge with every other copy
mirrored (so copies meet seamlessly):

- ``dubai``: the nine 5-class label masks of Dubai tile 8 as their 3×3 scene, 10000² (61k
  polygons, large regions);
- ``fragmented``: the 1 m Chesapeake land-cover map (260² px, 3,698 regions) tiled to 10240²:
  5.7 million polygons, woodland 79 % of the map and one region across the whole raster, full of
  holes — the map a fragmented landscape or a noisy prediction gives;
- ``fragmented_2x``: the same at 14480² (2× the pixels), ours only, for how memory grows;
- ``prediction``: the bundled model's class map of a 2048² mosaic of the Gorinchem orthophoto,
  tiled to 10240².

Both tools write a GeoPackage. ``--cases`` picks some; ``--dask N`` also runs ours on a local
Dask cluster of N one-thread workers (``--scheduler local``). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "build" / "bench"
DATA = ROOT.parent / "shared" / "data"
DUBAI8 = DATA / "landcover" / "dubai" / "tile_8"
CHESAPEAKE = DATA / "rasters" / "chesapeake_m_3907833_nw_17_1_lc_classes.tif"
CARD = ROOT / "resources" / "models" / "landcover" / "model.json"
CLASSES = json.loads(CARD.read_text())["classes"]  # the bundled model's codes, names, colours


def mirror_tiled(
    tile: np.ndarray, size: int, path: Path, crs: str, pixel: float, nodata: int | None = None
) -> Path:
    """A size×size class GeoTIFF of ``tile`` repeated, every other copy mirrored, by strips."""
    if path.exists():
        return path

    def index(n: int, count: int) -> np.ndarray:
        i = np.arange(count)
        return np.where((i // n) % 2 == 0, i % n, n - 1 - i % n)

    rows, cols = index(tile.shape[0], size), index(tile.shape[1], size)
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 1,
        "dtype": "uint8",
        "crs": crs,
        "transform": from_origin(300000, 2800000, pixel, pixel),
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "nodata": nodata,
    }
    tmp = path.with_suffix(".partial.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        for row in range(0, size, 1024):
            strip = rows[row : row + 1024]
            dst.write(tile[strip][:, cols], 1, window=Window(0, row, size, len(strip)))
        dst.update_tags(CLASSES=json.dumps(CLASSES))
    os.replace(tmp, path)
    return path


def dubai_raster() -> Path:
    parts = []
    for k in range(1, 10):
        with warnings.catch_warnings():  # the PNG masks carry no georeferencing, as documented
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(DUBAI8 / f"image_part_{k:03d}_mask.png") as png:
                parts.append(png.read(1))
    scene = np.concatenate([np.concatenate(parts[r * 3 : r * 3 + 3], axis=1) for r in range(3)])
    return mirror_tiled(scene, 10_000, WORK / "classes_10000.tif", "EPSG:32640", 0.5, 255)


def fragmented_raster(size: int) -> Path:
    with rasterio.open(CHESAPEAKE) as src:
        tile = src.read(1)
    return mirror_tiled(tile, size, WORK / f"fragmented_{size}.tif", "EPSG:26917", 1.0)


def prediction_raster() -> Path:
    """The bundled model's map of a 2048² Gorinchem mosaic (bench_segment's), tiled to 10240²."""
    from bench_segment import mosaic

    classes = WORK / "prediction_2048.tif"
    if not classes.exists():
        subprocess.run(
            [sys.executable, "-m", "segment_plugin.engine", "segment", str(mosaic(2048))]
            + ["--output", str(classes), "--progress", "json"],
            stdout=subprocess.DEVNULL,
            check=True,
        )
    with rasterio.open(classes) as src:
        tile = src.read(1)
    return mirror_tiled(tile, 10240, WORK / "prediction_10240.tif", "EPSG:28992", 0.25, 255)


CASES = {
    "dubai": (dubai_raster, True),
    "fragmented": (lambda: fragmented_raster(10240), True),
    "fragmented_2x": (lambda: fragmented_raster(14480), False),
    "prediction": (prediction_raster, True),
}


def timed(command: list[str]) -> dict:
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{command[0]} failed: {err[-2000:]}")
    return {
        "wall_s": round(time.perf_counter() - started, 2),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }


def run_case(name: str, dask_workers: int = 0) -> dict:
    import pyogrio

    build, with_gdal = CASES[name]
    raster = build()
    ours_out, gdal_out = WORK / f"{name}_ours.gpkg", WORK / f"{name}_gdal.gpkg"
    for old in (ours_out, gdal_out):
        old.unlink(missing_ok=True)
    with rasterio.open(raster) as src:
        result: dict = {"raster": f"{src.width}x{src.height} {src.dtypes[0]}"}
    result["ours"] = timed(
        [sys.executable, "-m", "segment_plugin.engine", "vectorize", str(raster)]
        + ["--output", str(ours_out), "--progress", "json"]
    )
    result["features"] = {"ours": pyogrio.read_info(ours_out)["features"]}
    if dask_workers:
        ours_out.unlink()
        key = f"ours_dask_{dask_workers}"
        result[key] = timed(
            [sys.executable, "-m", "segment_plugin.engine", "vectorize", str(raster)]
            + ["--output", str(ours_out), "--scheduler", "local", "--workers", str(dask_workers)]
        )
        result["features"][key] = pyogrio.read_info(ours_out)["features"]
        result[f"wall_ratio_{key}_over_ours"] = round(
            result[key]["wall_s"] / result["ours"]["wall_s"], 3
        )
    if with_gdal:
        result["gdal_polygonize"] = timed(
            ["/usr/bin/python3", "/usr/bin/gdal_polygonize.py", "-q", str(raster)]
            + ["-f", "GPKG", str(gdal_out), "classes", "class_id"]
        )
        result["features"]["gdal_polygonize"] = pyogrio.read_info(gdal_out)["features"]
        ours, gdal = result["ours"], result["gdal_polygonize"]
        result["wall_ratio_ours_over_gdal"] = round(ours["wall_s"] / gdal["wall_s"], 3)
        result["rss_ratio_ours_over_gdal"] = round(ours["peak_rss_mb"] / gdal["peak_rss_mb"], 3)
        if dask_workers:
            dask = result[f"ours_dask_{dask_workers}"]
            result[f"wall_ratio_ours_dask_{dask_workers}_over_gdal"] = round(
                dask["wall_s"] / gdal["wall_s"], 3
            )
    for path in (ours_out, gdal_out):
        path.unlink(missing_ok=True)  # GBs each on the fragmented cases
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--dask", type=int, default=0, help="also on N local Dask workers")
    args = parser.parse_args()
    if not DUBAI8.exists() or not CHESAPEAKE.exists():
        print(json.dumps({"error": f"{DATA} is missing: the bench needs ../shared/data"}))
        sys.exit(1)
    WORK.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "goal": "wall and rss ratios: wall <= 1.0, rss <= 2.0",
        "note": "ours also merges strips, measures area_m2/perim_m and writes class names; "
        "gdal_polygonize.py writes class_id only",
    }
    for name in args.cases:
        report[name] = run_case(name, args.dask)
        print(json.dumps({name: report[name]}), file=sys.stderr)  # so far, if a later case fails
    if "fragmented" in report and "fragmented_2x" in report:
        for measure, key in (("peak_rss_mb", "rss"), ("wall_s", "wall")):
            report["fragmented_2x"][f"{key}_ratio_over_fragmented"] = round(
                report["fragmented_2x"]["ours"][measure] / report["fragmented"]["ours"][measure], 3
            )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
