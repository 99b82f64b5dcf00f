"""COCO-compatible run-length encoding of masks.

An RLE is ``{"size": [height, width], "counts": ...}``: run lengths over the mask in
**column-major** order, starting with a run of zeros (possibly empty). ``counts`` is either the
plain list of ints or COCO's compressed string (pycocotools' ``rleToString``: each count, after
the third as a difference to the count two before, written in 5-bit groups as characters
from ``0`` (48) upward). Class rasters are encoded column strip by column strip, so memory stays
bounded by one strip whatever the raster's size.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np


def encode(mask: np.ndarray) -> dict[str, Any]:
    """Uncompressed RLE of a 2-D boolean mask."""
    mask = np.asarray(mask, bool)
    builder = RunBuilder()
    builder.add(mask.ravel(order="F"))
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": builder.counts()}


def decode(rle: dict[str, Any]) -> np.ndarray:
    """The boolean mask of an RLE (either ``counts`` form)."""
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, str):
        counts = string_to_counts(counts)
    if sum(counts) != height * width:
        raise ValueError(f"RLE counts sum to {sum(counts)}, not {height}×{width}")
    values = np.zeros(len(counts), bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape((height, width), order="F")


def compress(rle: dict[str, Any]) -> dict[str, Any]:
    """The same RLE with COCO's compressed-string counts."""
    counts = rle["counts"]
    if isinstance(counts, str):
        return dict(rle)
    return {"size": list(rle["size"]), "counts": counts_to_string(counts)}


def counts_to_string(counts: Sequence[int]) -> str:
    """COCO's compressed counts string (rleToString in pycocotools)."""
    chars = []
    for i, count in enumerate(counts):
        x = int(count) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift, as in C for a signed long
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            chars.append(chr(c + 48))
    return "".join(chars)


def string_to_counts(text: str) -> list[int]:
    """Counts from COCO's compressed string (rleFrString in pycocotools)."""
    counts: list[int] = []
    p = 0
    while p < len(text):
        x = 0
        k = 0
        more = True
        while more:
            c = ord(text[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


class RunBuilder:
    """Accumulates runs of a boolean stream fed in pieces (column strips of a raster)."""

    def __init__(self) -> None:
        self._runs: list[int] = []
        self._value = False  # COCO counts start with a run of zeros
        self._length = 0

    def add(self, values: np.ndarray) -> None:
        """Append the next values of the stream."""
        values = np.asarray(values, bool)
        if values.size == 0:
            return
        changes = np.flatnonzero(values[1:] != values[:-1]) + 1
        bounds = np.concatenate([[0], changes, [values.size]])
        lengths = np.diff(bounds)
        first = bool(values[0])
        for index, length in enumerate(lengths.tolist()):
            value = first if index % 2 == 0 else not first
            if value == self._value:
                self._length += length
            else:
                self._runs.append(self._length)
                self._value = value
                self._length = length

    def counts(self) -> list[int]:
        """The run lengths so far, ending with the current run."""
        return [*self._runs, self._length]


def encode_classes(dataset: Any, codes: Iterable[int], strip_cols: int = 512) -> dict[int, dict]:
    """One uncompressed RLE per class code of a one-band class raster, column strip by strip."""
    from rasterio.windows import Window

    builders = {int(code): RunBuilder() for code in codes}
    for col in range(0, dataset.width, strip_cols):
        n = min(strip_cols, dataset.width - col)
        strip = dataset.read(1, window=Window(col, 0, n, dataset.height))
        flat = strip.ravel(order="F")
        for code, builder in builders.items():
            builder.add(flat == code)
    size = [int(dataset.height), int(dataset.width)]
    return {code: {"size": size, "counts": b.counts()} for code, b in builders.items()}
