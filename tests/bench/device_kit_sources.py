"""A compact copy of the multi-source training data for a lent GPU machine.

make device-kit-multisource writes it. A device call carries at most 64 MiB with the working
tree, and ../shared/data/landcover is 190 MB. What the copy changes, each a step training would
take anyway or a cut it states: sources finer than the training resolution are resampled to it
here (image: average; mask: mode), so the 10 cm drone chips travel at 0.5 m (1/25 of the
pixels); PNG images become JPEG (quality 92); and ``--thin NAME=K`` keeps every K-th training
image of a source (its held-out images all stay). The written sources file names the copy's
folders and resolutions.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import rasterio
from rasterio.enums import Resampling

from segment_plugin.engine.training.chips import IMAGE_SUFFIXES, MASK_SUFFIXES
from segment_plugin.engine.training.sources import is_validation

JPEG = {"driver": "JPEG", "QUALITY": "92"}


def _write(path: Path, data, driver: dict) -> None:
    profile = {"count": data.shape[0], "height": data.shape[1], "width": data.shape[2]}
    with rasterio.open(path, "w", dtype=data.dtype, **profile, **driver) as dst:
        dst.write(data)
    Path(f"{path}.aux.xml").unlink(missing_ok=True)


def _read(path: Path, factor: float, resampling: Resampling):
    with rasterio.open(path) as src:
        shape = (src.count, round(src.height / factor), round(src.width / factor))
        return src.read(out_shape=shape, resampling=resampling)


def _copy_pair(image: Path, mask: Path, out: Path, factor: float) -> str:
    """Copies one image and its mask into ``out``; returns the image's new name."""
    if factor == 1 and image.suffix.lower() != ".png":
        shutil.copy2(image, out / image.name)
        shutil.copy2(mask, out / mask.name)
        return image.name
    name = f"{image.stem}.jpg"
    _write(out / name, _read(image, factor, Resampling.average), JPEG)
    _write(out / mask.name, _read(mask, factor, Resampling.mode), {"driver": "PNG"})
    return name


def compact(sources: Path, root: Path, resolution: float, output: Path, thin: dict) -> None:
    spec = json.loads(sources.read_text())
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)
    shutil.copy2(root / "classes.json", output / "classes.json")
    for source in spec["sources"]:
        folder, out = root / source["folder"], output / source["folder"]
        out.mkdir(parents=True)
        if (folder / "labels.json").exists():
            shutil.copy2(folder / "labels.json", out / "labels.json")
        gsd = source.get("gsd_m")
        factor = resolution / gsd if gsd and gsd < resolution else 1.0
        patterns, held_out, kept = source.get("validation", []), [], 0
        images = [
            p
            for p in sorted(folder.rglob("*"))
            if p.suffix.lower() in IMAGE_SUFFIXES and not p.stem.endswith("_mask")
        ]
        for image in images:
            stem = image.stem.removesuffix("_image")
            masks = [m for s in MASK_SUFFIXES if (m := image.with_name(f"{stem}_mask{s}")).exists()]
            validation = is_validation(str(image.relative_to(folder)), patterns)
            if not masks:
                continue
            if not validation:
                kept += 1
                if (kept - 1) % thin.get(source["name"], 1):
                    continue
            target = out / image.parent.relative_to(folder)
            target.mkdir(parents=True, exist_ok=True)
            new = _copy_pair(image, masks[0], target, factor)
            if validation:
                held_out.append(str((target / new).relative_to(out)))
        source["validation"] = held_out  # exact names: the copy's suffixes may differ
        notes = []
        if factor != 1:
            source["gsd_m"] = resolution
            notes.append(f"resampled from {gsd} m")
        if source["name"] in thin:
            notes.append(f"every {thin[source['name']]}th training image")
        if notes:
            source["kit"] = "; ".join(notes)
    (output / "sources.json").write_text(json.dumps(spec, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=Path, required=True)
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--resolution", type=float, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--thin", action="append", default=[], metavar="NAME=K")
    args = parser.parse_args()
    thin = {k: int(v) for k, v in (t.split("=") for t in args.thin)}
    compact(args.sources, args.data_root, args.resolution, args.output, thin)


if __name__ == "__main__":
    main()
