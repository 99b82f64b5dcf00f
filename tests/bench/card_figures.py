"""`make card-bundled`: writes the bundled model's measured figures into its card.

Reads what was measured, never a typed number: ``evaluate`` on Dubai tile 8 at the card's tile
(plain and with ``--tta``), ``make bench``'s CPU speeds, the size of ``model.keras`` and, from the
training state when there is one, the mean validation mIoU of the last 10 epochs: the shipped
epoch was chosen by its tile-8 score, so that mean shows how much the choice flatters it.
Usage: card_figures.py EVALUATE.json EVALUATE_TTA.json BENCH_SEGMENT.json [STATE.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUNDLED = ROOT / "resources" / "models" / "landcover"


def last_json(path: str) -> dict:
    return json.loads(Path(path).read_text().strip().splitlines()[-1])


def main(evaluated: str, evaluated_tta: str, bench: str, state: str | None = None) -> None:
    card_path = BUNDLED / "model.json"
    card = json.loads(card_path.read_text())
    plain, tta = last_json(evaluated), last_json(evaluated_tta)
    speed = json.loads(Path(bench).read_text())
    metrics = card["metrics"]
    metrics[f"miou_tile_{card['tile_size']}"] = round(plain["miou"], 5)
    metrics["per_class_iou_tile"] = {k: round(v, 5) for k, v in plain["per_class_iou"].items()}
    metrics["miou_tta"] = round(tta["miou"], 5)
    metrics["per_class_iou_tta"] = {k: round(v, 5) for k, v in tta["per_class_iou"].items()}
    metrics["cpu_inference"] = {
        "model_only_mpx_per_s": speed["mpx_per_s_model_only"],
        "end_to_end_mpx_per_s": speed["mpx_per_s_end_to_end"],
        "measured": f"make bench: {speed['machine']['cpus']}-core "
        f"{speed['machine']['platform']}, tile {speed['tile']}",
    }
    metrics["size_mb"] = round((BUNDLED / "model.keras").stat().st_size / 1e6, 1)
    if state and Path(state).exists():
        history = json.loads(Path(state).read_text())["history"]
        last = [epoch["val_miou"] for epoch in history[-10:]]
        metrics["miou_last_10_epochs_mean"] = round(sum(last) / len(last), 4)
    partial = card_path.with_suffix(".json.partial")
    partial.write_text(json.dumps(card, indent=2) + "\n")
    partial.replace(card_path)
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__.strip().splitlines()[-1])
    main(*sys.argv[1:])
