"""`make bench`, training: patches per second of the default architecture on this machine's CPU.

One epoch of 12 steps × 8 patches of 256 px sampled (with augmentation) from the real Dubai
tiles 1–7, validation on one tile-8 image; prints one JSON object.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "build" / "bench"
LANDCOVER = ROOT.parent / "shared" / "data" / "landcover"


def main() -> None:
    from segment_plugin.engine.params import TrainParams
    from segment_plugin.engine.training.train import train

    if not LANDCOVER.exists():
        print(json.dumps({"error": f"{LANDCOVER} is missing: the bench needs ../shared/data"}))
        sys.exit(1)
    val = WORK / "train_val"
    shutil.rmtree(val, ignore_errors=True)
    val.mkdir(parents=True)
    for name in ("image_part_005.jpg", "image_part_005_mask.png"):
        shutil.copy(LANDCOVER / "dubai" / "tile_8" / name, val / name)
    train_dirs = [LANDCOVER / "dubai" / f"tile_{k}" for k in range(1, 8)]
    params = TrainParams(
        images=tuple(train_dirs),
        val_images=val,
        output=WORK / "train_model",
        classes=LANDCOVER / "classes.json",
        epochs=1,
        patch=256,
        batch=8,
        steps_per_epoch=12,
        overwrite=True,
    )
    result = train(params)
    print(
        json.dumps(
            {
                "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
                "architecture": "separable_unet",
                "patch": 256,
                "batch": 8,
                "steps": 12,
                "patches_per_s_including_validation": result["patches_per_s"],
                "note": "one epoch, including validation on one 2149x1479 image",
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
