"""Two models side by side on real rasters: a PNG per raster (the previous model's preview above,
the new one's below) and the area per class of each, as JSON on stdout.

    compare_models.py --old OLD_MODEL --new NEW_MODEL --output-dir DIR RASTER[:BANDS] ...

BANDS as segment --bands (e.g. spacenet_rotterdam_ms_bgrn_1m_uint16.tif:3,2,1). Both models run
through the engine's own segment and preview, as a user's would.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np
import rasterio

from segment_plugin.engine.inference import segment
from segment_plugin.engine.params import SegmentParams
from segment_plugin.engine.preview import write_preview

GAP = 12  # white rows between the two previews


def _read_png(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            return src.read()


def _stack(top: Path, bottom: Path, output: Path) -> None:
    """One PNG: ``top`` above ``bottom`` (both as wide as each other: previews of one raster)."""
    a, b = _read_png(top), _read_png(bottom)
    gap = np.full((a.shape[0], GAP, a.shape[2]), 255, np.uint8)
    both = np.concatenate([a, gap, b], axis=1)
    profile = {"driver": "PNG", "width": both.shape[2], "height": both.shape[1]}
    with rasterio.open(output, "w", count=both.shape[0], dtype="uint8", **profile) as dst:
        dst.write(both)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True)
    parser.add_argument("--new", required=True)
    parser.add_argument("--output-dir", required=True, type=Path)
    parser.add_argument("rasters", nargs="+")
    args = parser.parse_args()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    report = {}
    for spec in args.rasters:
        path, _, bands = spec.partition(":")
        raster = Path(path)
        band_list = tuple(int(b) for b in bands.split(",")) if bands else None
        previews, areas = [], {}
        for label, model in (("old", args.old), ("new", args.new)):
            classes = args.output_dir / f"{raster.stem}_{label}.tif"
            result = segment(
                SegmentParams(raster, classes, model=model, bands=band_list, overwrite=True)
            )
            areas[label] = {k: round(v / 10_000, 4) for k, v in result["class_area_m2"].items()}
            preview = args.output_dir / f"{raster.stem}_{label}.png"
            write_preview(raster, classes, preview, overwrite=True)
            previews.append(preview)
        _stack(*previews, args.output_dir / f"{raster.stem}_old_vs_new.png")
        report[raster.name] = {"area_ha": areas}
    print(json.dumps({"old": args.old, "new": args.new, "rasters": report}, indent=2))


if __name__ == "__main__":
    main()
