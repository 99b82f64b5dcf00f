"""Reading inputs and creating outputs with rasterio, window by window.

Inputs: any GDAL-readable raster, any band count and dtype; validity comes from GDAL's dataset
mask (nodata value, alpha band or internal mask). Outputs: tiled, compressed GeoTIFFs on the
input's grid, written under a temporary name and renamed only when complete.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from segment_plugin.engine.errors import DependencyError, InputError, OutputError
from segment_plugin.engine.models.package import IGNORE_CODE, ClassInfo, ModelCard

MIN_SIZE = 4  # pixels; smaller rasters cannot be tiled or reflect-padded meaningfully
OUTPUT_BLOCK = 256

try:
    import rasterio
    from rasterio.enums import ColorInterp
    from rasterio.errors import RasterioIOError
except ImportError as exc:  # pragma: no cover - reported by `segment-plugin info`
    raise DependencyError(f"rasterio is not installed in this engine environment: {exc}") from exc


def open_input(path: str | os.PathLike[str]) -> Any:
    """Open a raster for reading, or raise one clear InputError."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"input not found: {path}")
    try:
        dataset = rasterio.open(path)
    except RasterioIOError as exc:
        raise InputError(f"{path} is not a raster GDAL can read ({exc})") from exc
    if dataset.width < MIN_SIZE or dataset.height < MIN_SIZE:
        size = f"{dataset.width}×{dataset.height}"
        dataset.close()
        raise InputError(f"{path} is {size} pixels; at least {MIN_SIZE}×{MIN_SIZE} are needed")
    return dataset


def resolve_bands(
    dataset: Any, card: ModelCard, requested: Sequence[int] | None
) -> tuple[int, ...]:
    """1-based input bands feeding the model's bands, in the model's order.

    Without ``requested``: bands are matched by colour interpretation or description
    (red/green/blue/nir…); failing that, the first non-alpha bands in file order.
    """
    needed = len(card.bands)
    count = dataset.count
    if requested:
        if len(requested) != needed:
            raise InputError(
                f"--bands lists {len(requested)} bands but model {card.name!r} takes {needed} "
                f"({', '.join(card.bands)})"
            )
        bad = [b for b in requested if not 1 <= b <= count]
        if bad:
            raise InputError(f"band {bad[0]} is out of range: the input has bands 1..{count}")
        return tuple(requested)
    names: dict[str, int] = {}
    for index in range(1, count + 1):
        interp = dataset.colorinterp[index - 1]
        description = (dataset.descriptions[index - 1] or "").strip().lower()
        for name in (description, interp.name.lower()):
            if name and name not in names:
                names[name] = index
    by_name = [names.get(band.lower()) for band in card.bands]
    if all(by_name) and len(set(by_name)) == needed:
        return tuple(int(b) for b in by_name)  # type: ignore[arg-type]
    usable = [i for i in range(1, count + 1) if dataset.colorinterp[i - 1] != ColorInterp.alpha]
    if len(usable) < needed:
        raise InputError(
            f"the input has {len(usable)} usable band(s) but model {card.name!r} needs {needed} "
            f"({', '.join(card.bands)})"
        )
    return tuple(usable[:needed])


def pixel_size_m(dataset: Any) -> tuple[float, float] | None:
    """Ground size of one pixel in metres (x, y); None without a CRS.

    Geographic CRSs are measured on the ellipsoid at the raster's centre.
    """
    crs = dataset.crs
    if crs is None:
        return None
    res_x, res_y = dataset.res
    if crs.is_projected:
        factor = crs.linear_units_factor[1] if crs.linear_units_factor else 1.0
        return res_x * factor, res_y * factor
    from pyproj import CRS, Geod

    geod = Geod(ellps="WGS84") if crs.to_epsg() is None else CRS(crs.to_wkt()).get_geod()
    centre_x, centre_y = dataset.xy(dataset.height / 2, dataset.width / 2)
    _, _, dx = geod.inv(centre_x, centre_y, centre_x + res_x, centre_y)
    _, _, dy = geod.inv(centre_x, centre_y, centre_x, centre_y + res_y)
    return abs(dx), abs(dy)


def check_output_path(path: Path, input_path: Path, overwrite: bool) -> None:
    """Refuse an output that is the input, exists (without overwrite) or cannot be written."""
    if path.resolve() == input_path.resolve():
        raise OutputError(f"the output {path} is the input raster; choose another file")
    if path.exists() and not overwrite:
        raise OutputError(f"{path} exists; pass --overwrite to replace it")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"the output folder {folder} does not exist")
    probe = temporary_sibling(path)
    try:  # os.access says yes to root even on read-only file systems: really try
        probe.touch()
    except OSError as exc:
        raise OutputError(f"cannot write in {folder}: {exc.strerror}") from exc
    probe.unlink()


def temporary_sibling(path: Path) -> Path:
    """A hidden name in the same folder (same file system, so the final rename is atomic)."""
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.partial{path.suffix or '.tif'}")


def output_profile(
    dataset_profile: dict[str, Any], count: int, nodata: int | None
) -> dict[str, Any]:
    """Tiled, deflate-compressed uint8 GeoTIFF on the given grid."""
    width, height = dataset_profile["width"], dataset_profile["height"]
    profile = {
        "driver": "GTiff",
        "dtype": "uint8",
        "count": count,
        "width": width,
        "height": height,
        "crs": dataset_profile.get("crs"),
        "transform": dataset_profile["transform"],
        "nodata": nodata,
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }
    if width >= OUTPUT_BLOCK and height >= OUTPUT_BLOCK:
        profile.update(tiled=True, blockxsize=OUTPUT_BLOCK, blockysize=OUTPUT_BLOCK)
    return profile


def describe_classes(dst: Any, classes: Sequence[ClassInfo], model_name: str) -> None:
    """Colour table, band description and class names in the metadata of a class raster."""
    colormap = {c.code: (*c.rgb(), 255) for c in classes}
    colormap[IGNORE_CODE] = (0, 0, 0, 0)
    dst.write_colormap(1, colormap)
    dst.set_band_description(1, "land-cover class")
    dst.update_tags(
        CLASSES=json.dumps([{"code": c.code, "name": c.name, "color": c.color} for c in classes]),
        MODEL=model_name,
        **{f"CLASS_{c.code}": c.name for c in classes},
    )


@contextmanager
def committed(paths: Sequence[Path]) -> Iterator[list[Path]]:
    """Temporary names for ``paths``; renamed to them only if the block succeeds, else deleted."""
    temps = [temporary_sibling(p) for p in paths]
    try:
        yield temps
        for temp, final in zip(temps, paths):
            os.replace(temp, final)
    finally:
        for temp in temps:
            for leftover in (temp, temp.with_name(temp.name + ".aux.xml")):
                leftover.unlink(missing_ok=True)


def as_uint8_probabilities(probs: np.ndarray) -> np.ndarray:
    """Probabilities 0..1 scaled to 0..255 (rounded)."""
    return np.clip(np.rint(probs * 255.0), 0, 255).astype(np.uint8)
