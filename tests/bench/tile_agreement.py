"""How much the class map depends on the tile size: segment at tiles 256 and 512 (or --tiles)
and in one whole-image pass, and report the share of pixels where each tiled map agrees with the
whole one, per raster and pooled over every raster larger than one tile.

    tile_agreement.py --model MODEL --work-dir DIR RASTER ...

Besides the RASTERs, takes held-out images that are larger than a tile at 0.5 m, written under
DIR as GeoTIFFs on grids of their known resolution: Dubai tile 8's nine parts (1 m, the estimate
in docs/multisource-candidate.md) and the two held-out Massachusetts road tiles (1 m). JSON on
stdout; the seconds each tile size took are wall time of ``segment`` in this process.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin

from segment_plugin.engine.inference import segment, working_grid
from segment_plugin.engine.models.registry import resolve_model
from segment_plugin.engine.params import SegmentParams
from segment_plugin.engine.progress import Reporter

LANDCOVER = Path(__file__).resolve().parents[3] / "shared/data/landcover"
#: (image, metres per pixel, a metric CRS of its region)
HELD_OUT = [
    *((f"dubai/tile_8/image_part_00{part}.jpg", 1.0, "EPSG:32640") for part in range(1, 10)),
    ("massachusetts_roads/10078660_15.png", 1.0, "EPSG:26986"),
    ("massachusetts_roads/10528795_15.png", 1.0, "EPSG:26986"),
]


def as_geotiff(image: Path, gsd: float, crs: str, folder: Path) -> Path:
    """``image`` (not georeferenced) as a GeoTIFF on a ``gsd`` grid, so it is resampled as a
    user's raster would be."""
    out = folder / f"{image.parent.name}_{image.stem}_{gsd:g}m.tif"
    if out.exists():
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(image) as src:
            data = src.read()
    profile = {
        "driver": "GTiff",
        "width": data.shape[2],
        "height": data.shape[1],
        "count": data.shape[0],
        "dtype": data.dtype.name,
        "crs": crs,
        "transform": from_origin(300_000, 2_790_000, gsd, gsd),
        "tiled": True,
        "compress": "deflate",
    }
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(data)
    return out


def whole_tile(raster: Path, model: str) -> int:
    """A tile that holds the whole working grid (a multiple of the model's input multiple)."""
    card = resolve_model(model).card
    with rasterio.open(raster) as src:
        grid = working_grid(src, card, None, Reporter())
    side = max(grid.height, grid.width)
    return -(-side // card.input_multiple) * card.input_multiple


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="landcover")
    parser.add_argument("--work-dir", required=True, type=Path)
    parser.add_argument(
        "--tiles", default="256,512", type=lambda text: [int(t) for t in text.split(",")],
        help="tile sizes to compare with the whole-image pass",
    )  # fmt: skip
    parser.add_argument("rasters", nargs="*", type=Path)
    args = parser.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    held_out = [
        as_geotiff(LANDCOVER / name, gsd, crs, args.work_dir)
        for name, gsd, crs in HELD_OUT
        if (LANDCOVER / name).exists()
    ]
    report = {}
    same = dict.fromkeys(args.tiles, 0)
    seconds = dict.fromkeys(args.tiles, 0.0)
    pooled = 0
    for raster in [*args.rasters, *held_out]:
        maps = {}
        whole = whole_tile(raster, args.model)
        larger = whole > max(args.tiles)  # larger than every tile compared: it tests them all
        for tile in dict.fromkeys((*args.tiles, whole)):  # a tile that is the whole image once
            out = args.work_dir / f"{raster.stem}_tile{tile}.tif"
            start = time.perf_counter()
            segment(SegmentParams(raster, out, model=args.model, tile=tile, overwrite=True))
            if larger and tile != whole:
                seconds[tile] += time.perf_counter() - start
            with rasterio.open(out) as src:
                maps[tile] = src.read(1)
        valid = maps[whole] != 255
        agree = {tile: int(np.sum((maps[tile] == maps[whole]) & valid)) for tile in args.tiles}
        report[raster.name] = {
            "whole_image_tile": whole,
            **{f"agreement_tile_{t}": round(agree[t] / valid.sum(), 4) for t in args.tiles},
        }
        if larger:
            pooled += int(valid.sum())
            for tile in args.tiles:
                same[tile] += agree[tile]
    pooled_report = {
        **{f"agreement_tile_{t}": round(same[t] / pooled, 4) for t in args.tiles if pooled},
        **{f"seconds_tile_{t}": round(seconds[t], 1) for t in args.tiles if pooled},
    }
    report = {"model": args.model, "rasters": report, "larger_than_a_tile": pooled_report}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
