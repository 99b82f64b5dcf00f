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

#: The smallest tile a small raster is fitted to: below it the model lacks context.
MIN_TILE = 256


def default_overlap(tile: int) -> int:
    """The overlap used when none is given: 3/8 of the tile.

    Measured on the demo raster with the bundled model at its tile of 512 (Hann blend, against a
    single pass of the whole raster; ``make bench``): an overlap of a quarter of the tile left
    1.33× the expected class changes on tile-border lines, a faint seam; 3/8 left 1.03 and half
    0.94. 3/8 costs 1.44× the model work of a quarter (stride 320 instead of 384), half 2.25×.
    """
    return tile * 3 // 8


#: The pixels of one batch of tiles when none is given: four tiles of 512 px.
BATCH_PIXELS = 4 * 512 * 512


def default_batch(tile: int) -> int:
    """Tiles per model call when none is given: :data:`BATCH_PIXELS` worth, from 1 to 4.

    A larger tile takes fewer, so memory stays near four 512 px tiles' (tile 768, 2 a call: 1.07
    GB at most against 0.93 GB, segmenting a 4320 × 2958 px grid); a smaller one does not take
    more, so that lowering the tile still saves memory.
    """
    return max(1, min(4, round(BATCH_PIXELS / tile**2)))


def fitted_tile(tile: int, height: int, width: int, multiple: int) -> int:
    """The tile for a (height, width) grid: ``tile``, or less where one smaller tile holds it all.

    A grid smaller than the tile is one pass either way; padded out to the whole tile it would
    see reflected image that is not there, which moves the map (6 % of Manila's pixels at 0.5 m
    between tiles 416 and 512) and costs model work. Not below :data:`MIN_TILE`, and only for
    models that take any multiple of ``multiple`` (a fixed-size model's multiple is 1).
    """
    if multiple <= 1:
        return tile
    side = -(-max(height, width) // multiple) * multiple
    return min(tile, max(side, MIN_TILE))


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


def pad_to_tile(values: np.ndarray, tile: int) -> np.ndarray:
    """A (bands, h, w) edge tile of a raster smaller than a tile, reflect-padded to tile × tile."""
    _, h, w = values.shape
    if h == tile and w == tile:
        return values
    return np.pad(values, ((0, 0), (0, tile - h), (0, tile - w)), mode="reflect")


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

    def tile_rows_for(self, first: int, last: int) -> list[int]:
        """Indexes of the tile rows that cover grid rows ``first`` to ``last`` (exclusive)."""
        return [i for i, row in enumerate(self.rows) if row < last and row + self.tile > first]


def strip_bounds(grid: TileGrid, count: int) -> list[tuple[int, int]]:
    """Row ranges of ``count`` strips of about equal tile rows, cut at tile-row origins.

    A strip's rows are finished by the tile rows that cover them alone, so a strip segmented by
    itself (with :meth:`TileGrid.tile_rows_for`) gives exactly the rows a whole run gives there.
    """
    origins = grid.rows
    count = max(1, min(count, len(origins)))
    cuts = sorted({origins[round(k * len(origins) / count)] for k in range(count)})
    return list(zip(cuts, cuts[1:] + [grid.height]))


class RollingAccumulator:
    """Weighted sums of probabilities for the rows still open; finished rows are handed out.

    One preallocated buffer of ``tile`` rows, in the model's (rows, width, classes) layout so a
    tile is added in place without reordering. After a tile row, the rows above the next tile
    row's origin are final: they are handed out and the overlap rows move to the top. Memory is
    ``tile × width × classes`` floats whatever the raster's height.
    """

    def __init__(
        self, grid: TileGrid, classes: int, window: np.ndarray, first_tile_row: int = 0
    ) -> None:
        self.grid = grid
        self.classes = classes
        self.window = window[:, :, None]
        self.start = grid.rows[first_tile_row]  # grid row held in buffer row 0
        rows = min(grid.tile, grid.height)
        self.sums = np.zeros((rows, grid.width, classes), np.float32)
        self.weights = np.zeros((rows, grid.width, 1), np.float32)
        self._scratch = np.empty((grid.tile, grid.tile, classes), np.float32)
        self._origins = grid.rows
        self._next_row = first_tile_row  # index of the tile row being filled

    def add(self, row: int, col: int, probs: np.ndarray) -> None:
        """Add one tile's probabilities (tile, tile, classes), cropped to the grid."""
        h = min(self.grid.tile, self.grid.height - row)
        w = min(self.grid.tile, self.grid.width - col)
        r = row - self.start
        if r < 0 or r + h > self.sums.shape[0]:
            raise ValueError(f"tile at row {row} is outside the open rows (from {self.start})")
        weight = self.window[:h, :w]
        scratch = self._scratch[:h, :w]
        np.multiply(probs[:h, :w], weight, out=scratch)
        self.sums[r : r + h, col : col + w] += scratch
        self.weights[r : r + h, col : col + w] += weight

    def add_in_order(self, row: int, col: int, probs: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Add a tile of a row-ordered stream; returns the rows its tile row's start finished."""
        finished = []
        while self._origins[self._next_row] < row:  # the first tile of a new tile row
            finished.append(self.pop_until(self._origins[self._next_row + 1]))
            self._next_row += 1
        self.add(row, col, probs)
        return finished

    def finish(self) -> tuple[int, np.ndarray]:
        """The rows still open, once every tile was added."""
        return self.pop_until(self.grid.height)

    def pop_until(self, row: int) -> tuple[int, np.ndarray]:
        """Hand out finished rows before ``row``: (first row, probabilities (n, width, classes))."""
        n = max(0, min(row - self.start, self.sums.shape[0]))
        start = self.start
        probs = self.sums[:n] / self.weights[:n]
        keep = self.sums.shape[0] - n
        self.sums[:keep] = self.sums[n:]  # the overlap rows move up (numpy handles the overlap)
        self.weights[:keep] = self.weights[n:]
        self.sums[keep:] = 0
        self.weights[keep:] = 0
        self.start += n
        return start, probs
