"""Tile grid, blending window and the rolling accumulator, checked against direct computation."""

from __future__ import annotations

import numpy as np
import pytest

from segment_plugin.engine.tiling import (
    WINDOW_FLOOR,
    RollingAccumulator,
    TileGrid,
    blend_window,
    default_batch,
    fitted_tile,
    tile_origins,
)


@pytest.mark.parametrize(
    ("length", "tile", "stride", "expected"),
    [
        (10, 16, 12, [0]),  # shorter than a tile: one padded tile
        (16, 16, 12, [0]),
        (30, 16, 12, [0, 12, 14]),  # last tile flush with the end
        (40, 16, 12, [0, 12, 24]),
    ],
)
def test_tile_origins(length, tile, stride, expected):
    assert tile_origins(length, tile, stride) == expected


@pytest.mark.parametrize(
    ("tile", "height", "width", "multiple", "expected"),
    [
        (512, 410, 380, 32, 416),  # one tile holds it: rounded up to the multiple, not to 512
        (512, 60, 60, 32, 256),  # a small chip keeps MIN_TILE of context
        (512, 600, 300, 32, 512),  # larger than the tile one way: tiled as asked
        (256, 200, 200, 32, 256),  # never above the tile asked for
        (128, 100, 100, 32, 128),
        (512, 300, 300, 1, 512),  # a fixed-size model (no multiple) keeps its tile
    ],
)
def test_fitted_tile(tile, height, width, multiple, expected):
    assert fitted_tile(tile, height, width, multiple) == expected


@pytest.mark.parametrize(
    ("tile", "expected"), [(64, 4), (256, 4), (512, 4), (640, 3), (768, 2), (1024, 1), (4096, 1)]
)
def test_default_batch_holds_about_four_512_px_tiles(tile, expected):
    """Fewer tiles of a larger tile, never more than 4 of a smaller one (memory must fall)."""
    assert default_batch(tile) == expected


@pytest.mark.parametrize(("height", "width"), [(1, 1), (37, 91), (64, 64), (200, 33)])
def test_grid_covers_every_pixel(height, width):
    grid = TileGrid(height, width, tile=32, overlap=8)
    covered = np.zeros((height, width), int)
    for r in grid.rows:
        for c in grid.cols:
            covered[r : r + 32, c : c + 32] += 1
    assert covered.min() >= 1
    assert grid.count == len(grid.rows) * len(grid.cols)


def test_blend_window_is_smooth_and_positive():
    w = blend_window(64)
    assert w.shape == (64, 64) and w.min() >= WINDOW_FLOOR
    assert w[31, 31] == pytest.approx(w.max(), rel=1e-3)
    assert np.allclose(w, w.T) and np.allclose(w, w[::-1, ::-1])


def test_accumulator_is_the_weighted_mean_and_stays_small():
    rng = np.random.default_rng(1)
    grid = TileGrid(100, 70, tile=32, overlap=12)
    window = blend_window(32)
    acc = RollingAccumulator(grid, classes=3, window=window)
    sums = np.zeros((3, 100, 70))
    weights = np.zeros((100, 70))
    out = np.zeros((3, 100, 70), np.float32)
    held = acc.sums.shape[0]
    for i, r in enumerate(grid.rows):
        for c in grid.cols:
            tile = rng.random((32, 32, 3)).astype(np.float32)
            acc.add(r, c, tile)
            h, w = min(32, 100 - r), min(32, 70 - c)
            sums[:, r : r + h, c : c + w] += np.moveaxis(tile[:h, :w], -1, 0) * window[:h, :w]
            weights[r : r + h, c : c + w] += window[:h, :w]
        end = grid.rows[i + 1] if i + 1 < len(grid.rows) else grid.height
        start, probs = acc.pop_until(end)
        out[:, start : start + probs.shape[0]] = np.moveaxis(probs, -1, 0)
    assert np.allclose(out, sums / weights, atol=1e-5)
    assert held == grid.tile  # bounded: one tile's rows, never the whole height
