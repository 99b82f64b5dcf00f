"""The tile grid, the blending window and the rolling accumulator of blended probabilities.

Every pixel's probabilities are the weighted mean of all tiles covering it, weighted by a 2-D Hann
window (high in a tile's centre, low at its border, where a tile lacks context), so tile borders
leave no seams. Rows of tiles are processed top to bottom; the accumulator holds only the rows a
later tile can still touch and hands finished rows out, so memory does not grow with the height.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Weight floor: pixels on the raster's outer edge are covered by tile borders only.
WINDOW_FLOOR = 1e-3


def tile_origins(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles along one axis: regular, the last one flush with the end.

    A raster shorter than a tile gets one tile at 0 (padded when read).
    """
    if length <= tile:
        return [0]
    origins = list(range(0, length - tile + 1, stride))
    if origins[-1] != length - tile:
        origins.append(length - tile)
    return origins


def blend_window(tile: int) -> np.ndarray:
    """A (tile, tile) Hann window with a small floor, float32."""
    ramp = np.hanning(tile + 2)[1:-1]  # strictly positive inside
    window = np.outer(ramp, ramp).astype(np.float32)
    return np.maximum(window, WINDOW_FLOOR)


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles go on a (height, width) grid."""

    height: int
    width: int
    tile: int
    overlap: int

    @property
    def stride(self) -> int:
        """Distance between tile origins."""
        return max(1, self.tile - self.overlap)

    @property
    def rows(self) -> list[int]:
        """Row origins of the tile rows."""
        return tile_origins(self.height, self.tile, self.stride)

    @property
    def cols(self) -> list[int]:
        """Column origins of the tiles in a row."""
        return tile_origins(self.width, self.tile, self.stride)

    @property
    def count(self) -> int:
        """Number of tiles."""
        return len(self.rows) * len(self.cols)


class RollingAccumulator:
    """Weighted sums of probabilities for the rows still open; finished rows are handed out."""

    def __init__(self, grid: TileGrid, classes: int, window: np.ndarray) -> None:
        self.grid = grid
        self.classes = classes
        self.window = window
        self.start = 0  # first grid row held
        self.sums = np.zeros((classes, 0, grid.width), np.float32)
        self.weights = np.zeros((0, grid.width), np.float32)

    def _ensure(self, end: int) -> None:
        held = self.start + self.weights.shape[0]
        if end > held:
            extra = end - held
            self.sums = np.concatenate(
                [self.sums, np.zeros((self.classes, extra, self.grid.width), np.float32)], axis=1
            )
            self.weights = np.concatenate(
                [self.weights, np.zeros((extra, self.grid.width), np.float32)], axis=0
            )

    def add(self, row: int, col: int, probs: np.ndarray) -> None:
        """Add one tile's probabilities (tile, tile, classes), cropped to the grid."""
        h = min(self.grid.tile, self.grid.height - row)
        w = min(self.grid.tile, self.grid.width - col)
        self._ensure(row + h)
        weight = self.window[:h, :w]
        r = row - self.start
        self.sums[:, r : r + h, col : col + w] += np.moveaxis(probs[:h, :w, :], -1, 0) * weight
        self.weights[r : r + h, col : col + w] += weight

    def pop_until(self, row: int) -> tuple[int, np.ndarray]:
        """Hand out finished rows before ``row``: (first row, probabilities (classes, n, width))."""
        n = max(0, min(row, self.start + self.weights.shape[0]) - self.start)
        start = self.start
        probs = self.sums[:, :n] / self.weights[:n]
        self.sums = self.sums[:, n:].copy()
        self.weights = self.weights[n:].copy()
        self.start += n
        return start, probs
