"""`make bench`: the bundled model under TensorFlow (Keras) and ONNX Runtime, same tiles, same run.

Model only: ``predict_on_batch`` on the tiles segment makes of a 5000×5000 mosaic of the demo
orthophoto (bench_segment.mosaic), the two runtimes alternated three times so that a machine
busy for a while slows both. End to end: a whole ``segment`` process on the same mosaic under
each runtime (wall, peak RSS), and whether the two class rasters agree. Printed as one JSON object.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import numpy as np
import rasterio

sys.path.insert(0, str(Path(__file__).parent))
from bench_segment import WORK, bench_setup, model_only_seconds, mosaic, segment_process  # noqa: E402

from segment_plugin.engine.models.package import ModelPackage  # noqa: E402

RUNTIMES = ("keras", "onnx")
REPEATS = 3


def main() -> None:
    model_dir, note = bench_setup()
    package = ModelPackage.open(model_dir)
    if set(package.runtimes) != set(RUNTIMES):
        print(json.dumps({"error": f"{model_dir} needs model.keras and model.onnx"}))
        sys.exit(1)
    raster = mosaic(5000)
    ends, classes = {}, {}
    for runtime in RUNTIMES:  # processes first: a child's peak RSS starts from its parent's
        ends[runtime] = segment_process(raster, model_dir, runtime)
        with rasterio.open(WORK / f"classes_{raster.stem}.tif") as src:
            classes[runtime] = src.read(1)
    loops = {r: [] for r in RUNTIMES}
    tiles = 0
    for _ in range(REPEATS):
        for runtime in RUNTIMES:
            seconds, _, tiles = model_only_seconds(raster, package, runtime)
            loops[runtime].append(seconds)
    best = {r: min(v) for r, v in loops.items()}
    tile_mpx = tiles * 512 * 512 / 1e6
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "model": note,
        "raster": "5000x5000 mosaic of the demo orthophoto (tile 512, overlap 192, batch 4)",
        "model_only": {
            "tiles": tiles,
            "seconds": {r: [round(s, 2) for s in v] for r, v in loops.items()},
            "tile_mpx_per_s_best": {r: round(tile_mpx / s, 3) for r, s in best.items()},
            "onnx_speedup": round(best["keras"] / best["onnx"], 3),
        },
        "segment_process": ends,
        "segment_speedup": round(ends["keras"]["wall_s"] / ends["onnx"]["wall_s"], 3),
        "class_agreement": round(float(np.mean(classes["keras"] == classes["onnx"])), 6),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
