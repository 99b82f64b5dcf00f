"""``segment-plugin export-rle``: one COCO run-length mask per class of a class raster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from segment_plugin.engine import outputs
from segment_plugin.engine.rle import compress, encode_classes
from segment_plugin.engine.vectorize import class_names, open_class_raster, present_codes


def export_rle(
    input_path: Path, output: Path, counts: str = "string", overwrite: bool = False
) -> dict[str, Any]:
    """Write ``{"size", "classes": [{"class_id", "class", "pixels", "rle"}]}`` as JSON."""
    with open_class_raster(input_path) as src:
        outputs.check_output_path(output, input_path, overwrite)
        names = class_names(src)
        nodata = set() if src.nodata is None else {int(src.nodata)}
        present = sorted(present_codes(src, exclude=nodata))
        masks = encode_classes(src, present)
        size = [src.height, src.width]
    entries = []
    for code, rle in masks.items():
        pixels = sum(rle["counts"][1::2])
        entries.append(
            {
                "class_id": code,
                "class": names.get(code, f"class {code}"),
                "pixels": pixels,
                "rle": compress(rle) if counts == "string" else rle,
            }
        )
    document = {"size": size, "counts": counts, "classes": entries}
    with outputs.committed([output]) as (temp,):
        temp.write_text(json.dumps(document), encoding="utf-8")
    return {"output": str(output), "classes": {e["class"]: e["pixels"] for e in entries}}
