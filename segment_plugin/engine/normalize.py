"""Model-input normalisation with statistics of the whole raster, never of one tile.

A per-tile stretch gives every tile its own colours — a seam generator. So statistics (band
percentiles and means) come from one decimated read of the whole raster (GDAL uses overviews when
the file has them) before tiling starts, and every tile is normalised with the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from segment_plugin.engine.errors import InputError
from segment_plugin.engine.models.package import ModelCard, Normalization

STATS_MAX_SIDE = 1024  # the decimated read for statistics is at most this many pixels a side
#: Value range of the dtype a model was trained on (what its normalisation expects).
DTYPE_RANGE = {"uint8": (0.0, 255.0), "uint16": (0.0, 65535.0), "float32": (0.0, 1.0)}


@dataclass(frozen=True)
class BandStats:
    """Whole-raster statistics of the bands the model reads (in model band order)."""

    low: np.ndarray  # per-band low percentile
    high: np.ndarray  # per-band high percentile
    mean: np.ndarray  # per-band mean (fills nodata pixels)
    valid_fraction: float

    @property
    def span(self) -> np.ndarray:
        """Per band, high − low, kept above 0 (a flat band is not divided by zero)."""
        return np.maximum(self.high - self.low, 1e-6)


def raster_stats(dataset: Any, bands: tuple[int, ...], low: float, high: float) -> BandStats:
    """Percentiles and means of ``bands`` over the whole raster, from one decimated read."""
    scale = min(1.0, STATS_MAX_SIDE / max(dataset.width, dataset.height))
    shape = (
        len(bands),
        max(1, round(dataset.height * scale)),
        max(1, round(dataset.width * scale)),
    )
    data = dataset.read(list(bands), out_shape=shape, masked=True)
    valid = ~np.ma.getmaskarray(data).any(axis=0) & np.isfinite(data.data).all(axis=0)
    fraction = float(valid.mean())
    if not valid.any():
        raise InputError(f"{dataset.name} holds only nodata pixels: nothing to segment")
    return band_stats(data.data[:, valid], low, high, fraction)


def band_stats(
    values: np.ndarray, low: float, high: float, valid_fraction: float = 1.0
) -> BandStats:
    """Statistics of (bands, pixels) values, e.g. a sample of one image or of many."""
    values = values.astype(np.float64)
    lows, highs = np.percentile(values, [low, high], axis=1)
    return BandStats(lows, highs, values.mean(axis=1), valid_fraction)


class Normalizer:
    """Turns raw tiles (bands, h, w) into model input (h, w, bands) float32, as the card says."""

    def __init__(self, card: ModelCard, stats: BandStats, input_dtype: str) -> None:
        self.card = card
        self.stats = stats
        norm = card.normalization
        self.warning: str | None = None
        # A model trained on uint8 imagery fed with uint16 (or float) imagery would see values
        # far outside its training range: stretch the whole raster into the model's range first.
        # A model that asks for it (``stretch``) gets every raster stretched so.
        mismatch = norm.method != "percentile" and input_dtype != card.input_dtype
        self._restretch = mismatch or norm.stretch
        self._target = DTYPE_RANGE.get(card.input_dtype, (0.0, 255.0))
        if mismatch:
            lo, hi = self._target
            self.warning = (
                f"the input is {input_dtype} but model {card.name!r} was trained on "
                f"{card.input_dtype}: bands are stretched from their {norm.low:g}-{norm.high:g} "
                f"percentiles of the whole raster to {lo:g}..{hi:g}"
            )
        n = len(card.bands)
        self._fill = stats.mean.astype(np.float32).reshape(n, 1, 1)
        stats = raster_stretch(card, stats, input_dtype)
        self._low = stats.low.astype(np.float32).reshape(n, 1, 1)
        self._span = stats.span.astype(np.float32).reshape(n, 1, 1)

    def fill_value(self) -> np.ndarray:
        """Per-band value put into nodata pixels before normalising (the band mean)."""
        return self._fill

    def __call__(self, tile: np.ndarray) -> np.ndarray:
        """Normalise one tile (bands, h, w) → (h, w, bands) float32."""
        x = tile.astype(np.float32, copy=False)
        norm = self.card.normalization
        if norm.method == "percentile":
            x = np.clip((x - self._low) / self._span, 0.0, 1.0)
        else:
            if self._restretch:
                x = _stretched(x, self._low, self._span, self._target)
            if norm.method == "scale":
                x = x * np.float32(norm.scale) + np.float32(norm.offset)
            else:  # meanstd
                n = len(self.card.bands)
                mean = np.asarray(norm.mean, np.float32).reshape(n, 1, 1)
                std = np.asarray(norm.std, np.float32).reshape(n, 1, 1)
                x = (x - mean) / std
        return np.ascontiguousarray(np.moveaxis(x, 0, -1))


def raster_stretch(card: ModelCard, stats: BandStats, input_dtype: str) -> BandStats:
    """The statistics a raster of ``input_dtype`` (with ``stats``) is stretched by for ``card``.

    The card's ``max_gain`` limits the stretch of a raster of the model's own dtype; another
    dtype is stretched in full into the model's range.
    """
    if card.normalization.stretch and input_dtype == card.input_dtype:
        return gain_limited(stats, card.normalization, input_dtype)
    return stats


def gain_limited(stats: BandStats, norm: Normalization, dtype: str) -> BandStats:
    """``stats`` for a stretch of ``dtype`` values that widens no band by more than max_gain.

    A band narrower than the dtype's range / ``norm.max_gain`` has its low..high widened to
    that, about its middle.
    """
    if norm.max_gain is None:
        return stats
    lo, hi = DTYPE_RANGE.get(dtype, (0.0, 1.0))
    span = np.maximum(stats.high - stats.low, (hi - lo) / norm.max_gain)
    middle = (stats.high + stats.low) / 2
    return replace(stats, low=middle - span / 2, high=middle + span / 2)


def _stretched(
    x: np.ndarray, low: np.ndarray, span: np.ndarray, target: tuple[float, float]
) -> np.ndarray:
    """``x`` (bands, h, w) with each band's ``low``..``low + span`` mapped onto ``target``."""
    lo, hi = target
    return lo + np.clip((x - low) / span, 0.0, 1.0) * (hi - lo)


def stretched_image(image: np.ndarray, stats: BandStats) -> np.ndarray:
    """``image`` (bands, h, w) stretched by ``stats`` as :class:`Normalizer` stretches, same dtype.

    Training stretches each image once so, by the statistics of the raster it stands for;
    rounding back to an integer dtype moves a value by half a step at most.
    """
    n = image.shape[0]
    low, span = stats.low.reshape(n, 1, 1), stats.span.reshape(n, 1, 1)
    target = DTYPE_RANGE.get(str(image.dtype), (0.0, 1.0))
    out = _stretched(image.astype(np.float32), low, span, target)
    return np.rint(out).astype(image.dtype) if image.dtype.kind in "iu" else out.astype(image.dtype)


def without_stretch(card: ModelCard) -> ModelCard:
    """``card`` for images stretched already (training's scenes, evaluate's grouped ones)."""
    return replace(card, normalization=replace(card.normalization, stretch=False))
