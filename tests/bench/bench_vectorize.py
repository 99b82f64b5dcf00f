"""`make bench`, vectorising: our streaming vectorizer vs gdal_polygonize.py on a 10k×10k raster.

The class raster is real land cover: the nine 5-class label masks of Dubai tile 8
(../shared/data/landcover, 2149×1479 each) laid out 3×3 as in the scene, that 6447×4437 block
repeated with every other copy mirrored until it covers 10000×10000 (the bundled model's
prediction replaces it once Step 5 ships one). Prints one JSON object.
"""

from __future__ import annotations

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
DUBAI8 = ROOT.parent / "shared" / "data" / "landcover" / "dubai" / "tile_8"
SIZE = 10_000


def class_mosaic() -> Path:
    path = WORK / "classes_10000.tif"
    if path.exists():
        return path
    parts = []
    for k in range(1, 10):
        with warnings.catch_warnings():  # the PNG masks carry no georeferencing, as documented
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(DUBAI8 / f"image_part_{k:03d}_mask.png") as png:
                parts.append(png.read(1))
    scene = np.concatenate([np.concatenate(parts[r * 3 : r * 3 + 3], axis=1) for r in range(3)])
    h, w = scene.shape
    row_band = np.concatenate(
        [scene if i % 2 == 0 else scene[:, ::-1] for i in range(-(-SIZE // w))], axis=1
    )[:, :SIZE]
    profile = {
        "driver": "GTiff",
        "width": SIZE,
        "height": SIZE,
        "count": 1,
        "dtype": "uint8",
        "crs": "EPSG:32640",
        "transform": from_origin(300000, 2800000, 0.5, 0.5),
        "nodata": 255,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
    }
    tmp = path.with_suffix(".partial.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        for k, row in enumerate(range(0, SIZE, h)):
            band = row_band if k % 2 == 0 else row_band[::-1]
            n = min(h, SIZE - row)
            dst.write(band[:n], 1, window=Window(0, row, SIZE, n))
        dst.update_tags(
            CLASSES=json.dumps(
                [
                    {"code": 0, "name": "background", "color": "#F5F5DC"},
                    {"code": 1, "name": "building", "color": "#D7191C"},
                    {"code": 2, "name": "woodland", "color": "#1A9641"},
                    {"code": 3, "name": "water", "color": "#2B83BA"},
                    {"code": 4, "name": "road", "color": "#FDAE61"},
                ]
            )
        )
    os.replace(tmp, path)
    return path


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


def main() -> None:
    if not DUBAI8.exists():
        print(json.dumps({"error": f"{DUBAI8} is missing: the bench needs ../shared/data"}))
        sys.exit(1)
    WORK.mkdir(parents=True, exist_ok=True)
    raster = class_mosaic()
    ours_out, gdal_out = WORK / "ours.gpkg", WORK / "gdal.gpkg"
    for old in (ours_out, gdal_out):
        old.unlink(missing_ok=True)
    gdal = timed(
        [
            "/usr/bin/python3",
            "/usr/bin/gdal_polygonize.py",
            "-q",
            str(raster),
            "-f",
            "GPKG",
            str(gdal_out),
            "classes",
            "class_id",
        ]
    )
    ours = timed(
        [
            sys.executable,
            "-m",
            "segment_plugin.engine",
            "vectorize",
            str(raster),
            "--output",
            str(ours_out),
            "--progress",
            "json",
        ]
    )
    import pyogrio

    features = {
        "ours": pyogrio.read_info(ours_out)["features"],
        "gdal_polygonize": pyogrio.read_info(gdal_out)["features"],
    }
    print(
        json.dumps(
            {
                "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
                "raster": f"{SIZE}x{SIZE} uint8 from Dubai tile 8 label masks, 3x3 scene mirrored",
                "ours": ours,
                "gdal_polygonize": gdal,
                "features": features,
                "wall_ratio_ours_over_gdal": round(ours["wall_s"] / gdal["wall_s"], 3),
                "goal": "<= 1.0",
                "note": "ours also merges strips, measures area_m2/perim_m and writes class names; "
                "gdal_polygonize.py writes class_id only",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
