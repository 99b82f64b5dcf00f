"""Connected class regions of a class raster as polygons, strip by strip of rows.

Polygons follow pixel edges (``rasterio.features.shapes``, 4-connectivity), one per connected
region. A region touching a strip's border may continue in the next strip, so its pieces are
held (:class:`RegionMerger`) and, once the region can no longer grow, stitched into one polygon
(``stitching``). The same merger joins the regions left open at the edges of row ranges
polygonised apart (Dask tasks): a task's open regions are the reduce step's "strip".
Regions are worked on in pixel coordinates (x = column, y = row), exact integers; finished ones
are handed over in the raster's CRS when the merger is given its transform.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import numpy as np

from segment_plugin.engine.progress import Reporter
from segment_plugin.engine.stitching import (
    Piece,
    pieces_of,
    polygons_of,
    rings_of,
    stitch,
    to_world,
)

STRIP_PIXELS = 1 << 20  # a strip's regions are built in memory at once
CHUNK = 10_000  # polygons converted (and cancel checked) at a time

Batch = tuple[np.ndarray, np.ndarray]  # (class codes, polygons)


def strip_rows_for(width: int) -> int:
    """Rows per strip of a raster this wide."""
    return max(1, STRIP_PIXELS // width)


def _selected_mask(data: np.ndarray, nodata: int | None, selected: np.ndarray | None) -> np.ndarray:
    mask = np.ones(data.shape, bool) if nodata is None else data != nodata
    if selected is not None:
        mask &= np.isin(data, selected)
    return mask


def _edge_intervals(piece: Piece, y: float) -> list[tuple[float, float]]:
    """Where a piece's shell runs along the horizontal line ``y``: [(x0, x1), ...]."""
    xy = piece.shell
    on_line = (xy[:-1, 1] == y) & (xy[1:, 1] == y)
    x0, x1 = xy[:-1, 0][on_line], xy[1:, 0][on_line]
    return list(zip(np.minimum(x0, x1).tolist(), np.maximum(x0, x1).tolist()))


class _Regions:
    """Pieces of regions cut by strip borders, grouped by a union-find until the region closes."""

    def __init__(self) -> None:
        self.borders: list[float] = []  # rows (y) where strips meet: where pieces are stitched
        self.parent: list[int] = []
        self.pieces: dict[int, list[Piece]] = {}  # root → pieces
        self.code: list[int] = []

    def add(self, code: int, piece: Piece) -> int:
        index = len(self.parent)
        self.parent.append(index)
        self.code.append(code)
        self.pieces[index] = [piece]
        return index

    def find(self, index: int) -> int:
        while self.parent[index] != index:
            self.parent[index] = self.parent[self.parent[index]]
            index = self.parent[index]
        return index

    def join(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            self.pieces[ra].extend(self.pieces.pop(rb))

    def close(self, roots: list[int], transform: Any = None) -> Batch:
        """The regions of ``roots``, each one polygon, built in one call (see ``polygons_of``)."""
        borders = np.asarray(self.borders, float)
        rings = []
        for root in roots:
            pieces = self.pieces.pop(root)
            rings.append(rings_of(pieces[0]) if len(pieces) == 1 else stitch(pieces, borders))
        codes = np.asarray([self.code[root] for root in roots], np.int64)
        return codes, polygons_of(rings, transform)


def _connect(
    regions: _Regions, above: list[tuple[int, list]], below: list[tuple[int, list]]
) -> None:
    """Join pieces of one class whose border edges overlap over a length (4-connectivity)."""
    spans = sorted((x0, x1, piece) for piece, intervals in above for x0, x1 in intervals)
    starts = [span[0] for span in spans]
    for piece, intervals in below:
        for x0, x1 in intervals:
            k = bisect.bisect_left(starts, x1) - 1  # spans starting before x1 …
            while k >= 0 and spans[k][1] > x0:  # … that end after x0: an overlap, not a corner
                regions.join(spans[k][2], piece)
                k -= 1


class RegionMerger:
    """Joins regions cut at strip borders, fed strip after strip in row order.

    ``add`` returns the regions that are finished: those inside the strip, and those whose
    pieces no longer touch the last border. ``height``: the raster's (nothing continues below
    it). ``top``: the first row fed when it is not the raster's top (a task below another):
    regions touching it may continue above, so they stay open; :meth:`open_regions` hands them,
    and those touching the last row fed, over to whoever joins this range with its neighbours.
    ``transform``: the raster's affine transform, to hand finished regions over in its CRS (open
    ones stay in pixel coordinates); None: pixel coordinates throughout.
    """

    def __init__(self, height: int, top: int = 0, transform: Any = None) -> None:
        self.height = height
        self.top = top
        self.transform = transform
        self.regions = _Regions()
        self.open_below: dict[int, list[tuple[int, list]]] = {}  # code → pieces on the last border
        self.pinned: list[int] = []  # pieces touching ``top``

    def add(self, row: int, bottom: int, codes: np.ndarray, polygons: np.ndarray) -> list[Batch]:
        """The regions of rows ``row``..``bottom`` (all of them, or all those touching an edge)."""
        import shapely

        regions = self.regions
        if row != self.top:
            regions.borders.append(float(row))
        bounds = shapely.bounds(polygons).reshape(-1, 4)
        pinned = (bounds[:, 1] == row) & (row == self.top > 0)
        touches_top = (row > 0) & (bounds[:, 1] == row) & np.isin(codes, list(self.open_below))
        touches_bottom = (bounds[:, 3] == bottom) & (bottom < self.height)
        inside = ~(touches_top | touches_bottom | pinned)
        inner = polygons[inside]  # whole regions inside this strip
        if self.transform is not None:
            inner = shapely.transform(inner, lambda xy: to_world(xy, self.transform))
        finished = [(codes[inside], inner)]
        at_top: dict[int, list[tuple[int, list]]] = defaultdict(list)
        at_bottom: dict[int, list[tuple[int, list]]] = defaultdict(list)
        was_open = [p for pieces in self.open_below.values() for p, _ in pieces]
        cut = np.flatnonzero(~inside)
        for k, piece in zip(cut, pieces_of(polygons[cut])):
            code = int(codes[k])
            index = regions.add(code, piece)
            if pinned[k]:
                self.pinned.append(index)
            if touches_top[k]:
                at_top[code].append((index, _edge_intervals(piece, row)))
            if touches_bottom[k]:
                at_bottom[code].append((index, _edge_intervals(piece, bottom)))
        for code, below in at_top.items():
            _connect(regions, self.open_below[code], below)
        # roots only after joining: a region may have grown through this strip
        still_open = {regions.find(p) for pieces in at_bottom.values() for p, _ in pieces}
        still_open |= {regions.find(p) for p in self.pinned}
        touched = was_open + [p for pieces in at_top.values() for p, _ in pieces]
        roots = sorted({regions.find(p) for p in touched} - still_open)
        if roots:
            finished.append(regions.close(roots, self.transform))
        self.open_below = dict(at_bottom)
        return finished

    def open_regions(self) -> Batch:
        """The regions touching the range's top or bottom edge, one polygon each, in pixels."""
        regions = self.regions
        touching = [p for pieces in self.open_below.values() for p, _ in pieces] + self.pinned
        roots = sorted({regions.find(p) for p in touching})
        self.open_below, self.pinned = {}, []
        return regions.close(roots)


def _strip_polygons(data: np.ndarray, mask: np.ndarray, row: int, reporter: Reporter) -> Batch:
    """Every 4-connected region of one strip: (class codes, polygons in pixel coordinates).

    Built in bulk from the rings' coordinates: 2.5× faster than one ``shape()`` per polygon.
    """
    import shapely
    from rasterio.features import shapes
    from rasterio.transform import Affine

    codes, rings_per_polygon, ring_lengths, flat, coords = [], [], [], [], []
    for count, (geometry, value) in enumerate(
        shapes(data, mask=mask, connectivity=4, transform=Affine.translation(0, row)), 1
    ):
        rings = geometry["coordinates"]
        codes.append(int(value))
        rings_per_polygon.append(len(rings))
        for ring in rings:
            ring_lengths.append(len(ring))
            flat.extend(ring)
        if count % CHUNK == 0:  # coordinates as Python tuples take 7× their size in numpy
            coords.append(np.asarray(flat, float))
            flat = []
            reporter.cancel.check()
    if not codes:
        return np.empty(0, np.int64), np.empty(0, object)
    coords.append(np.asarray(flat, float).reshape(-1, 2))
    rings = shapely.linearrings(
        np.concatenate(coords), indices=np.repeat(np.arange(len(ring_lengths)), ring_lengths)
    )
    polygons = shapely.polygons(rings, indices=np.repeat(np.arange(len(codes)), rings_per_polygon))
    return np.asarray(codes, np.int64), polygons


def polygonize(
    dataset: Any,
    selected: np.ndarray | None,
    reporter: Reporter,
    merger: RegionMerger | None = None,
    rows: tuple[int, int] | None = None,
    strip_rows: int | None = None,
) -> Iterator[Batch]:
    """Finished regions of rows ``rows`` (default all) in batches, read strip by strip.

    The regions touching the range's edges stay in ``merger`` (pass one,
    ``RegionMerger(height, top=rows[0])``, to take them with ``merger.open_regions()``).
    """
    from rasterio.windows import Window

    height, width, nodata = dataset.height, dataset.width, dataset.nodata
    nodata = None if nodata is None else int(nodata)
    first, end = rows or (0, height)
    merger = merger or RegionMerger(height, top=first)
    strip_rows = strip_rows or strip_rows_for(width)
    for row in range(first, end, strip_rows):
        reporter.cancel.check()
        bottom = min(row + strip_rows, end)
        data = dataset.read(1, window=Window(0, row, width, bottom - row))
        strip = _strip_polygons(data, _selected_mask(data, nodata, selected), row, reporter)
        del data
        finished = merger.add(row, bottom, *strip)
        del strip  # the generator keeps no reference to a batch while it is written
        while finished:
            yield finished.pop(0)
        reporter.progress((bottom - first) / (end - first), f"polygonised {bottom}/{end} rows")
