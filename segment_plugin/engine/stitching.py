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
from typing import Any

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


def stitch(polygons: list[Any], borders: np.ndarray) -> Any:
    """One polygon from the pieces of a 4-connected region (pixel coordinates).

    ``borders`` holds the rows (y) where strips meet (a piece's other straight runs on those rows
    are split and joined again, unchanged); the list of pieces is emptied.
    """
    import shapely

    chains: list[np.ndarray] = []
    edges = []
    holes = []
    while polygons:  # each piece is let go once its rings are taken: one copy at a time
        rings = shapely.get_rings(polygons.pop())
        shell = shapely.get_coordinates(rings[0])
        if signed_area(shell) < 0:
            shell = shell[::-1]
        cut_chains, cut_edges = _cut(shell, borders)
        chains.extend(cut_chains)
        edges.append(cut_edges)
        holes.extend(rings[1:])
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
            holes.append(shapely.linearrings(ring))
    return shapely.polygons(shell, holes=holes or None)
