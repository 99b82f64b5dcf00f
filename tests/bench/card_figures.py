"""`make card-bundled`: writes the bundled model's measured figures into its card.

Reads what was measured, never a typed number: ``evaluate`` on Dubai tile 8 at the card's tile
(plain, which becomes the card's headline mIoU, and with ``--tta``), ``evaluate --sources`` (each
training source's held-out images, per source), ``make bench``'s CPU speeds, the size of
``model.keras``; and ``evaluate`` on the training tiles themselves, which tells underfitting
(they score no better than tile 8) from poor transfer (they score far better).
``--text`` alone (make train-bundled) writes the card's hand-written fields instead: its name,
description, limitations and inference tile, kept in the repository beside the training sources.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from segment_plugin.engine.training import metrics as segmentation_metrics

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "resources" / "models" / "landcover"


def last_json(path: Path) -> dict:
    return json.loads(path.read_text().strip().splitlines()[-1])


def main(args: argparse.Namespace) -> None:
    card_path = BUNDLED / "model.json"
    card = json.loads(card_path.read_text())
    if args.text:
        text = json.loads(args.text.read_text())
        card.update({k: text[k] for k in ("name", "description", "limitations", "tile_size")})
    if args.evaluate:
        measured(card, args)
    partial = card_path.with_suffix(".json.partial")
    partial.write_text(json.dumps(card, indent=2) + "\n")
    partial.replace(card_path)
    print(json.dumps(card["metrics"], indent=2))


def measured(card: dict, args: argparse.Namespace) -> None:
    """The figures measured for ``card`` into its metrics."""
    plain = last_json(args.evaluate)
    metrics = card["metrics"]
    # the headline figures are evaluate's, as a user would measure them (the card's tile, its
    # class-weight correction), replacing what training measured on 256 px tiles
    for key in ("miou", "per_class_iou", "pixel_accuracy"):
        metrics[key] = plain[key]
    metrics["on"] = plain["on"]
    metrics["tile"] = card["tile_size"]
    if args.tta:
        tta = last_json(args.tta)
        metrics["miou_tta"] = round(tta["miou"], 5)
        metrics["per_class_iou_tta"] = {k: round(v, 5) for k, v in tta["per_class_iou"].items()}
    if args.sources:
        by_source = last_json(args.sources)
        metrics["per_source"] = {
            name: {k: r[k] for k in ("miou", "per_class_iou", "pixels")}
            | ({"labelled_classes": r["labelled_classes"]} if "labelled_classes" in r else {})
            for name, r in by_source["per_source"].items()
        }
        metrics["miou_mean_of_sources"] = by_source["miou"]
    if args.bench:
        speed = json.loads(args.bench.read_text())
        metrics["cpu_inference"] = {
            "model_only_mpx_per_s": speed["mpx_per_s_model_only"],
            "end_to_end_mpx_per_s": speed["mpx_per_s_end_to_end"],
            "measured": f"make bench: {speed['machine']['cpus']}-core "
            f"{speed['machine']['platform']}, tile {speed['tile']}, overlap {speed['overlap']}, "
            f"batch {speed['batch']}, per pixel of a {speed['resolution_m']} m grid",
        }
    metrics["size_mb"] = round((BUNDLED / "model.keras").stat().st_size / 1e6, 1)
    if args.fit:
        fits = {path.stem: last_json(path) for path in sorted(args.fit)}
        pooled = sum(np.array(fit["confusion_matrix"], np.int64) for fit in fits.values())
        metrics["miou_training_tiles"] = {
            "pooled": segmentation_metrics.report(pooled, list(plain["per_class_iou"]))["miou"],
            **{name: fit["miou"] for name, fit in fits.items()},
        }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", type=Path, help="name, description and limitations (JSON)")
    parser.add_argument("--evaluate", type=Path, help="evaluate on tile 8")
    parser.add_argument("--tta", type=Path, help="evaluate --tta on tile 8")
    parser.add_argument("--sources", type=Path, help="evaluate --sources (held-out, per source)")
    parser.add_argument("--bench", type=Path, help="bench_segment.json")
    parser.add_argument(
        "--fit", type=Path, nargs="*", default=[], help="evaluate on training tiles, one file each"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse())
