"""Join the pieces of a region cut by strip borders into one polygon, by stitching rings.

Pieces of one region are disjoint pixel sets, so the region's boundary is their boundaries with
the edges they share removed, and they share edges only along the strip borders. Stitching works
on that: the pieces' outer rings are cut where they run along a border, the border stretches are
split into pixel edges, an edge walked both ways (one piece above, one below) cancels, and what
is left is linked back into rings. The pieces' holes never touch a border, so they are kept as
they are. The cost is the pieces' outer rings plus the border length, not the region's size again
at every strip as with a polygon union (which cost 40+ minutes on a 10k² fragmented map).

Coordinates are pixel coordinates (integers), so every comparison is exact.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, NamedTuple

import numpy as np


def signed_area(ring: np.ndarray) -> float:
    """Shoelace area of a closed ring: > 0 when the ring has its inside on the left."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def _without_collinear(ring: np.ndarray) -> np.ndarray:
    """A closed ring without the vertices where it runs straight on (left where pieces met)."""
    points = ring[:-1]
    before = points - np.roll(points, 1, axis=0)
    after = np.roll(points, -1, axis=0) - points
    turns = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0] != 0
    kept = points[turns]
    return np.vstack([kept, kept[:1]])


def _split_at_touches(ring: np.ndarray) -> list[np.ndarray]:
    """Split a closed ring that passes a vertex twice into loops that touch there.

    A valid polygon may have a hole touching its shell at a point, but no ring touching itself.
    """
    points = ring[:-1]
    if len(np.unique(points, axis=0)) == len(points):
        return [ring]
    loops, path, seen = [], [], {}
    for point in map(tuple, points.tolist()):
        if point in seen:
            at = seen[point]
            loops.append(np.array(path[at:] + [point]))
            for dropped in path[at + 1 :]:
                del seen[dropped]
            del path[at + 1 :]
        else:
            seen[point] = len(path)
            path.append(point)
    loops.append(np.array(path + path[:1]))
    return loops


def _cut(ring: np.ndarray, borders: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Split a ring (inside on the left) into chains off the borders and unit edges on them.

    Returns the chains (vertex arrays, first to last) and the border edges as rows
    (x of the left end, y, direction ±1).
    """
    on = (ring[:-1, 1] == ring[1:, 1]) & np.isin(ring[:-1, 1], borders)
    if not on.any():
        return [ring], np.empty((0, 3), np.int64)
    first = int(np.argmax(on))  # start the walk on a border segment, so no chain wraps around
    ring = np.vstack([ring[first:-1], ring[: first + 1]])
    on = np.roll(on, -first)
    starts, ends = ring[:-1][on], ring[1:][on]
    lengths = np.abs(ends[:, 0] - starts[:, 0]).astype(np.int64)
    step = np.sign(ends[:, 0] - starts[:, 0]).astype(np.int64)
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    x = np.repeat(starts[:, 0].astype(np.int64), lengths) + np.repeat(step, lengths) * offsets
    direction = np.repeat(step, lengths)
    left = np.where(direction > 0, x, x - 1)
    edges = np.column_stack([left, np.repeat(starts[:, 1].astype(np.int64), lengths), direction])
    chains = []
    off = np.flatnonzero(~on)
    if off.size:
        breaks = np.flatnonzero(np.diff(off) > 1) + 1
        for run in np.split(off, breaks):
            chains.append(ring[run[0] : run[-1] + 2])
    return chains, edges


def _link(items: list[np.ndarray]) -> list[np.ndarray]:
    """Link open chains (each ends where others start) into closed rings.

    Where two chains leave one vertex (the region touches itself at a corner) either may be
    taken: the ring passes that vertex twice and ``_split_at_touches`` separates its loops.
    """
    leaving: dict[tuple[float, float], list[int]] = defaultdict(list)
    for index, chain in enumerate(items):
        leaving[(chain[0, 0], chain[0, 1])].append(index)
    used = np.zeros(len(items), bool)
    rings = []
    for start in range(len(items)):
        if used[start]:
            continue
        parts, item = [], start
        while True:  # every vertex has as many chains in as out: the walk ends where it began
            used[item] = True
            parts.append(items[item][:-1])
            end = items[item][-1]
            options = [j for j in leaving[(end[0], end[1])] if not used[j]]
            if not options:
                break
            item = options[0]
        ring = np.vstack(parts)
        rings.append(np.vstack([ring, ring[:1]]))
    return rings


class Piece(NamedTuple):
    """A piece of a region held open at a strip border, as int32 pixel coordinates.

    A GEOS ring costs about 270 bytes more than its coordinates; a region spanning a fragmented
    map holds a million small holes until its last strip, so its pieces are kept as arrays.
    """

    shell: np.ndarray  # (n, 2) closed ring
    holes: np.ndarray  # (m, 2) the holes' closed rings, one after another
    hole_sizes: np.ndarray  # vertices per hole


def pieces_of(polygons: np.ndarray) -> list[Piece]:
    """Polygons (pixel coordinates) as pieces, converted in one call."""
    import shapely

    if not len(polygons):
        return []
    _, coords, (ring_ends, polygon_ends) = shapely.to_ragged_array(polygons)
    coords = coords.astype(np.int32)
    pieces = []
    for first, last in zip(polygon_ends[:-1], polygon_ends[1:]):
        ends = ring_ends[first : last + 1]
        pieces.append(
            Piece(
                coords[ends[0] : ends[1]].copy(),
                coords[ends[1] : ends[-1]].copy(),
                np.diff(ends[1:]).astype(np.int32),
            )
        )
    return pieces


def to_world(coords: np.ndarray, transform: Any) -> np.ndarray:
    """Pixel coordinates (x = column, y = row) → the raster's CRS, by its affine ``transform``."""
    matrix = np.array([[transform.a, transform.d], [transform.b, transform.e]])
    world = coords @ matrix
    world += (transform.c, transform.f)
    return world


Rings = tuple[list[np.ndarray], list[np.ndarray]]  # a polygon's coordinate blocks, ring sizes


def polygons_of(rings: list[Rings], transform: Any) -> np.ndarray:
    """Polygons from (coordinate blocks, ring sizes) per polygon, shell first: one GEOS build.

    In world coordinates when a ``transform`` is given: built once, never copied to move them.
    """
    import shapely

    if not rings:
        return np.empty(0, object)
    ring_sizes = np.concatenate([size for _, sizes in rings for size in sizes])
    rings_per_polygon = [sum(len(size) for size in sizes) for _, sizes in rings]
    coords = np.concatenate([block for blocks, _ in rings for block in blocks]).astype(float)
    if transform is not None:
        coords = to_world(coords, transform)
    ring_ends = np.concatenate([[0], np.cumsum(ring_sizes)])
    polygon_ends = np.concatenate([[0], np.cumsum(rings_per_polygon)])
    kind = shapely.GeometryType.POLYGON
    return shapely.from_ragged_array(kind, coords, (ring_ends, polygon_ends))


def rings_of(piece: Piece) -> Rings:
    """A whole region held as one piece: its rings for :func:`polygons_of`."""
    return [piece.shell, piece.holes], [np.array([len(piece.shell)]), piece.hole_sizes]


def stitch(pieces: list[Piece], borders: np.ndarray) -> Rings:
    """The rings of one polygon from the pieces of a 4-connected region, for :func:`polygons_of`.

    ``borders`` holds the rows (y) where strips meet (a piece's other straight runs on those rows
    are split and joined again, unchanged); the list of pieces is emptied.
    """
    chains: list[np.ndarray] = []
    edges = []
    blocks, sizes = [], []  # the pieces' holes as they are, then the new ones
    while pieces:
        piece = pieces.pop()
        shell = piece.shell.astype(float)
        if signed_area(shell) < 0:
            shell = shell[::-1]
        cut_chains, cut_edges = _cut(shell, borders)
        chains.extend(cut_chains)
        edges.append(cut_edges)
        blocks.append(piece.holes)
        sizes.append(piece.hole_sizes)
    edges = np.concatenate(edges)
    # an edge walked once each way lies between a piece above and a piece below: inside
    keys, inverse, counts = np.unique(edges[:, :2], axis=0, return_inverse=True, return_counts=True)
    kept = edges[counts[inverse.ravel()] == 1]
    start_x = np.where(kept[:, 2] > 0, kept[:, 0], kept[:, 0] + 1).astype(float)
    y = kept[:, 1].astype(float)
    for x0, y0, step in zip(start_x, y, kept[:, 2].astype(float)):
        chains.append(np.array([[x0, y0], [x0 + step, y0]]))
    shell = None
    for ring in (loop for linked in _link(chains) for loop in _split_at_touches(linked)):
        ring = _without_collinear(ring)
        if signed_area(ring) > 0:
            if shell is not None:
                raise ValueError("the pieces do not form one connected region")
            shell = ring
        else:
            blocks.append(ring)
            sizes.append(np.array([len(ring)]))
    return [shell, *blocks], [np.array([len(shell)]), *sizes]
