"""The bench's seam measure tells tile seams from class edges that merely lie on tile borders;
with it, the bundled model tiled at segment's defaults leaves no seams on the demo raster."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import rasterio
from conftest import Recorder, shared_raster, single_pass_classes
from rasterio.windows import Window

from segment_plugin.engine.inference import segment
from segment_plugin.engine.models.registry import resolve_model
from segment_plugin.engine.params import SegmentParams
from segment_plugin.engine.tiling import TileGrid, default_overlap

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


def test_bundled_model_tiled_at_the_default_overlap_has_no_seams(tmp_path):
    """Segment's output on a real scene against one pass of the model over the whole of it.

    A trained model's tiles disagree where they lack context; Hann blending over a large enough
    overlap must leave that disagreement off the tile borders. (With this model an overlap of a
    quarter of the tile measured 1.43 on this crop.)
    """
    demo = shared_raster("demo_nl_gorinchem_rgb_25cm.tif")
    size = 992  # a multiple of 32 that the single pass can take whole
    crop = tmp_path / "demo_992.tif"
    with rasterio.open(demo) as src:
        profile = dict(src.profile, width=size, height=size)
        profile["transform"] = src.window_transform(Window(0, 0, size, size))
        with rasterio.open(crop, "w", **profile) as dst:
            dst.write(src.read(window=Window(0, 0, size, size)))
    single_pass = single_pass_classes(crop, "landcover")

    out = tmp_path / "classes.tif"
    # at the crop's own 25 cm (the single pass's grid): this is about tiles, not resampling
    segment(SegmentParams(crop, out, model="landcover", resolution=0.25), Recorder())
    with rasterio.open(out) as ds:
        tiled = ds.read(1)
    tile = resolve_model("landcover").card.tile_size
    borders = bench_segment.tile_border_lines(TileGrid(size, size, tile, default_overlap(tile)))
    assert len(borders) > 2  # several tiles, so there are borders to look at
    assert (tiled == single_pass).mean() > 0.95
    assert bench_segment.border_change_ratio(tiled, single_pass, borders) < 1.1
