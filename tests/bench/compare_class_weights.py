"""`make compare-class-weights`: which loss class weighting trains the best land-cover model.

Trains the default architecture three times from the same seed on the bundled model's data
(Dubai tiles 1–7 + NAIP/Chesapeake RGB), changing only ``--class-weights`` (median frequency,
inverse square-root frequency, none), and reports each run's best validation mIoU and per-class IoU
on the held-out Dubai tile 8. The runs are shorter than `make train-bundled` (128 px patches, fewer
steps) so that all three fit in about an hour on a 2-core CPU; EPOCHS/STEPS override that.
Each run resumes where it stopped (run it again after an interruption), and SCHEMES=a,b runs
only those, so the runs can also go side by side in separate processes.
Prints one JSON object; each run's model stays in build/class-weights/<scheme>.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "build" / "class-weights"
LANDCOVER = ROOT.parent / "shared" / "data" / "landcover"
SCHEMES = ("median_frequency", "inverse_sqrt_frequency", "none")


def run(scheme: str, epochs: int, steps: int) -> dict:
    from segment_plugin.engine.params import TrainParams
    from segment_plugin.engine.progress import TextReporter
    from segment_plugin.engine.training.train import train

    params = TrainParams(
        images=tuple(LANDCOVER / "dubai" / f"tile_{k}" for k in range(1, 8))
        + (LANDCOVER / "naip_chesapeake",),
        val_images=LANDCOVER / "dubai" / "tile_8",
        output=WORK / scheme,
        classes=LANDCOVER / "classes.json",
        bands=3,
        arch="separable_unet",
        epochs=epochs,
        steps_per_epoch=steps,
        patch=128,
        batch=16,
        class_weights=scheme,
        patience=epochs,
        seed=7,
        resume=(WORK / scheme / ".training" / "state.json").exists(),
    )
    start = time.perf_counter()
    result = train(params, TextReporter())  # progress on stderr
    report = result["val_report"]  # the best epoch's, also after a resume
    return {
        "class_weights": scheme,
        "best_val_miou": report["miou"],
        "best_epoch": result["best_epoch"],
        "val_per_class_iou": report["per_class_iou"],
        "pixel_accuracy": report["pixel_accuracy"],
        "val_miou_per_epoch": [row["val_miou"] for row in result["history"]],
        "seconds_this_sitting": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    if not LANDCOVER.exists():
        print(json.dumps({"error": f"{LANDCOVER} is missing: this needs ../shared/data"}))
        sys.exit(1)
    epochs = int(os.environ.get("EPOCHS", "20"))
    steps = int(os.environ.get("STEPS", "50"))
    schemes = os.environ.get("SCHEMES", ",".join(SCHEMES)).split(",")
    runs = [run(scheme, epochs, steps) for scheme in schemes]
    print(
        json.dumps(
            {
                "experiment": "class weights",
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                "setup": f"separable_unet, {epochs} epochs × {steps} steps × 16 patches of 128 px, "
                "seed 7, ce+dice, val = Dubai tile 8 (all images)",
                "runs": runs,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
