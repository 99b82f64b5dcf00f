"""Reading inputs and creating outputs with rasterio, window by window.

Inputs: any GDAL-readable raster, any band count and dtype; validity comes from GDAL's dataset
mask (nodata value, alpha band or internal mask). Outputs: tiled, compressed GeoTIFFs on the
input's grid, written under a temporary name and renamed only when complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segment_plugin.engine.errors import DependencyError, InputError
from segment_plugin.engine.models.package import ClassInfo, ModelCard

MIN_SIZE = 4  # pixels; smaller rasters cannot be tiled or reflect-padded meaningfully
OUTPUT_BLOCK = 256

try:
    import rasterio
    from rasterio.enums import ColorInterp
    from rasterio.errors import RasterioIOError
except ImportError as exc:  # pragma: no cover - reported by `segment-plugin info`
    raise DependencyError(f"rasterio is not installed in this engine environment: {exc}") from exc


def open_input(path: str | os.PathLike[str], min_size: int = MIN_SIZE) -> Any:
    """Open a raster for reading, or raise one clear InputError."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"input not found: {path}")
    try:
        dataset = rasterio.open(path)
    except RasterioIOError as exc:
        raise InputError(f"{path} is not a raster GDAL can read ({exc})") from exc
    if dataset.width < min_size or dataset.height < min_size:
        size = f"{dataset.width}×{dataset.height}"
        dataset.close()
        raise InputError(f"{path} is {size} pixels; at least {min_size}×{min_size} are needed")
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


RESAMPLE_TOLERANCE = 0.05  # work at the input's resolution when within 5 % of the model's
#: the most a model's fixed resolution upsamples an input: finer pixels than that add no detail,
#: only cost (a 24 m scene at a 0.5 m model's resolution would be 48× as wide)
MAX_UPSAMPLE = 4.0


def model_resolution_for(input_m: float, model_m: float) -> float:
    """Metres per pixel at which a model of resolution ``model_m`` sees an input of ``input_m``.

    The model's own, except for an input more than MAX_UPSAMPLE times coarser: that is upsampled
    by MAX_UPSAMPLE only. Segmenting and fine-tuning both use this, so a model fine-tuned on
    coarse imagery is run on it at the scale it was trained at.
    """
    return max(model_m, input_m / MAX_UPSAMPLE)


def output_profile(
    dataset_profile: dict[str, Any], count: int, nodata: int | None, dtype: str = "uint8"
) -> dict[str, Any]:
    """Tiled, deflate-compressed GeoTIFF (uint8 unless told) on the given grid."""
    width, height = dataset_profile["width"], dataset_profile["height"]
    profile = {
        "driver": "GTiff",
        "dtype": dtype,
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
    """Band description and class names in the metadata of a class raster.

    Its colour table goes in the ``.aux.xml`` beside it (``styling.write_class_sidecars``): one
    written into the GeoTIFF always has 256 entries, which QGIS lists as 256 legend classes.
    """
    dst.set_band_description(1, "land-cover class")
    dst.update_tags(
        CLASSES=json.dumps([{"code": c.code, "name": c.name, "color": c.color} for c in classes]),
        MODEL=model_name,
        **{f"CLASS_{c.code}": c.name for c in classes},
    )


def as_uint8_probabilities(probs: np.ndarray) -> np.ndarray:
    """Probabilities 0..1 scaled to 0..255 (rounded)."""
    return np.clip(np.rint(probs * 255.0), 0, 255).astype(np.uint8)
