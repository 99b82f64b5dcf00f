"""How much the class map depends on the tile size: segment at tiles 256 and 512 (or --tiles)
and in one whole-image pass, and report the share of pixels where each tiled map agrees with the
whole one.

    tile_agreement.py --model MODEL --work-dir DIR RASTER ...

Also takes Dubai tile 8's first part (not georeferenced) as a GeoTIFF on a 1 m grid (the
estimate of its resolution in docs/multisource-candidate.md), built under DIR, so that there is
a raster larger than one tile at the model's resolution. JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import rasterio
from rasterio.transform import from_origin

from segment_plugin.engine.inference import segment, working_grid
from segment_plugin.engine.models.registry import resolve_model
from segment_plugin.engine.params import SegmentParams
from segment_plugin.engine.progress import Reporter

SHARED = Path(__file__).resolve().parents[3] / "shared"
DUBAI = SHARED / "data/landcover/dubai/tile_8/image_part_001.jpg"


def dubai_geotiff(folder: Path) -> Path:
    """Dubai tile 8 part 1 on a 1 m UTM 40N grid (its resolution, estimated in the docs)."""
    out = folder / "dubai_tile8_part1_1m.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(DUBAI) as src:
            data = src.read()
    profile = {
        "driver": "GTiff",
        "width": data.shape[2],
        "height": data.shape[1],
        "count": 3,
        "dtype": "uint8",
        "crs": "EPSG:32640",
        "transform": from_origin(300_000, 2_790_000, 1.0, 1.0),
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
    rasters = list(args.rasters) + ([dubai_geotiff(args.work_dir)] if DUBAI.exists() else [])
    report = {}
    for raster in rasters:
        maps = {}
        whole = whole_tile(raster, args.model)
        for tile in (*args.tiles, whole):
            out = args.work_dir / f"{raster.stem}_tile{tile}.tif"
            segment(SegmentParams(raster, out, model=args.model, tile=tile, overwrite=True))
            with rasterio.open(out) as src:
                maps[tile] = src.read(1)
        reference = maps[whole]
        valid = reference != 255
        report[raster.name] = {
            "whole_image_tile": whole,
            **{
                f"agreement_tile_{tile}": round(float((maps[tile] == reference)[valid].mean()), 4)
                for tile in args.tiles
            },
        }
    print(json.dumps({"model": args.model, "rasters": report}, indent=2))


if __name__ == "__main__":
    main()
