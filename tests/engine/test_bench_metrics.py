"""The bench's seam measure tells tile seams from class edges that merely lie on tile borders."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_segment.py"
spec = importlib.util.spec_from_file_location("bench_segment", BENCH)
bench_segment = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench_segment)

BORDERS = [0, 64, 128, 192, 256]  # the tile lines of a 256 px image cut into 64 px tiles


def scene() -> np.ndarray:
    """Two classes meeting at column 100 (not a tile line), a block of a third at rows 20–40."""
    labels = np.zeros((256, 256), np.uint8)
    labels[:, 100:] = 1
    labels[20:40, 150:170] = 2
    return labels


def test_identical_predictions_have_no_seams():
    reference = scene()
    assert bench_segment.border_change_ratio(reference.copy(), reference, BORDERS) == 1.0


def test_a_class_change_cut_by_a_tile_border_counts_as_a_seam():
    reference = scene()
    tiled = reference.copy()
    tiled[64:128, 0:64] = 3  # one tile decided differently: its edges are tile lines
    assert bench_segment.border_change_ratio(tiled, reference, BORDERS) > 1.5


def test_edges_snapped_to_the_tile_grid_in_both_are_not_seams():
    reference = scene()
    reference[128:, 40:64] = 4  # the single pass itself has an edge on tile line 64
    tiled = reference.copy()
    tiled[200:210, 10:20] = 2  # and the tiled result differs only away from tile lines
    assert bench_segment.border_change_ratio(tiled, reference, BORDERS) < 1.0
