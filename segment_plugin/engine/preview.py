"""A PNG that shows an image and its classes side by side (what `make demo` writes).

Both are read decimated (at most ``max_side`` pixels a side), so a preview of a huge raster is
cheap; the classes are drawn with the class raster's own colour table.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from segment_plugin.engine import outputs, raster_io
from segment_plugin.engine.errors import InputError
from segment_plugin.engine.models.package import IGNORE_CODE

GAP = 8  # white pixels between the two panels


def _display_rgb(dataset, shape: tuple[int, int]) -> np.ndarray:
    """(3, h, w) uint8: the first three non-alpha bands, stretched 2–98 % unless already uint8."""
    from rasterio.enums import ColorInterp, Resampling

    bands = [
        i for i in range(1, dataset.count + 1) if dataset.colorinterp[i - 1] != ColorInterp.alpha
    ]
    bands = (bands * 3)[:3] if len(bands) < 3 else bands[:3]
    data = dataset.read(bands, out_shape=(3, *shape), resampling=Resampling.average, masked=True)
    valid = ~np.ma.getmaskarray(data).any(axis=0)
    values = data.data.astype(np.float32)
    if dataset.dtypes[0] != "uint8" and valid.any():
        low, high = np.percentile(values[:, valid], [2, 98], axis=1)
        values = (values - low[:, None, None]) / np.maximum(high - low, 1e-6)[:, None, None] * 255
    rgb = np.clip(values, 0, 255).astype(np.uint8)
    rgb[:, ~valid] = 255
    return rgb


def write_preview(
    image: Path, classes: Path, output: Path, max_side: int = 1000, overwrite: bool = False
) -> Path:
    """Write ``output`` (PNG): the image on the left, its classes on the right."""
    import rasterio
    from rasterio.enums import Resampling

    outputs.check_output_path(output, classes, overwrite)
    with (
        raster_io.open_input(image, min_size=1) as img,
        raster_io.open_input(classes, min_size=1) as cls,
    ):
        if (img.width, img.height) != (cls.width, cls.height):
            raise InputError(f"{classes} does not have the size of {image}")
        scale = min(1.0, max_side / max(img.width, img.height))
        shape = (max(1, round(img.height * scale)), max(1, round(img.width * scale)))
        left = _display_rgb(img, shape)
        codes = cls.read(1, out_shape=shape, resampling=Resampling.nearest)
        try:
            colormap = cls.colormap(1)
        except ValueError as exc:
            raise InputError(
                f"{classes} has no colour table: is it a class raster from segment?"
            ) from exc
    palette = np.full((256, 3), 255, np.uint8)
    for code, rgba in colormap.items():
        if code != IGNORE_CODE:
            palette[code] = rgba[:3]
    right = np.moveaxis(palette[codes], -1, 0)
    gap = np.full((3, shape[0], GAP), 255, np.uint8)
    picture = np.concatenate([left, gap, right], axis=2)
    with outputs.committed([output]) as (temp,), warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # a PNG picture
        with rasterio.open(
            temp,
            "w",
            driver="PNG",
            width=picture.shape[2],
            height=picture.shape[1],
            count=3,
            dtype="uint8",
        ) as dst:
            dst.write(picture)
    return output
