"""Cleaning a class raster before polygonising: majority smoothing and a minimum mapping unit.

Both work on strips of rows with a halo, so memory stays bounded on rasters of any size:

- ``majority_filter``: each pixel takes the most frequent class of its 3×3 neighbourhood (ties
  keep the pixel's own class); nodata stays nodata and is never spread. A halo of 1 row is exact.
- sieve (``sieve_strip``): regions (4-connected) smaller than ``size`` pixels take the class of
  their largest neighbour (GDAL's sieve, through rasterio). A region smaller than ``size`` pixels
  spans fewer than ``size`` rows, so with a halo of ``size`` rows every small region that reaches
  a strip's core is seen whole; a region cut by the halo's edge has at least ``size`` pixels in
  view and is kept, as it must be.
"""

from __future__ import annotations

import numpy as np


def majority_filter(classes: np.ndarray, nodata: int) -> np.ndarray:
    """One pass of a 3×3 modal filter over a (rows, cols) uint8 class array."""
    valid = classes != nodata
    padded = np.pad(classes, 1, mode="edge")
    padded_valid = np.pad(valid, 1, mode="constant", constant_values=False)
    values = np.unique(classes[valid])
    if values.size == 0:
        return classes.copy()
    rows, cols = classes.shape
    counts = np.zeros((values.size, rows, cols), np.uint8)
    for k, value in enumerate(values):
        hit = (padded == value) & padded_valid
        for dy in range(3):
            for dx in range(3):
                counts[k] += hit[dy : dy + rows, dx : dx + cols]
    own = np.searchsorted(values, np.where(valid, classes, values[0]))
    best = counts.argmax(axis=0)
    own_count = np.take_along_axis(counts, own[None], axis=0)[0]
    best_count = counts.max(axis=0)
    keep_own = own_count >= best_count  # ties keep the pixel's class: no drifting edges
    out = np.where(keep_own, classes, values[best]).astype(classes.dtype)
    out[~valid] = nodata
    return out


def sieve_strip(classes: np.ndarray, size: int, nodata: int) -> np.ndarray:
    """GDAL's sieve (4-connectivity) on one strip; nodata pixels neither grow nor are sieved."""
    from rasterio.features import sieve

    valid = classes != nodata
    return sieve(classes, size=size, mask=valid, connectivity=4)
