"""Labelled scenes and the patches cut from them for training and validation.

Three sources, one interface (``Scene.read``): (a) a folder of image/mask pairs
(``<stem>.<ext>`` + ``<stem>_mask.png|tif``, as in ../shared/data/landcover), (b) a georeferenced
raster with a label raster on the same grid, (c) a raster with a polygon layer whose class field
is rasterised on the raster's grid (pixels outside every polygon are ignore, so sparse digitising
works). Masks hold class *codes*; they become channel indices (255 = ignore) through one lookup
table, and codes outside the class list are refused with a clear message.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segment_plugin.engine.errors import InputError
from segment_plugin.engine.training.augment import (
    geometric,
    photometric,
    resize_bilinear,
    resize_nearest,
)
from segment_plugin.engine.training.metrics import IGNORE_INDEX

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
MASK_SUFFIXES = (".png", ".tif", ".tiff")


def code_lookup(codes: Sequence[int]) -> np.ndarray:
    """256-entry table: class code → channel index, everything else → IGNORE_INDEX."""
    table = np.full(256, IGNORE_INDEX, np.uint8)
    for index, code in enumerate(codes):
        table[code] = index
    return table


def _read_plain(path: Path) -> np.ndarray:
    import rasterio

    try:
        with warnings.catch_warnings():  # plain JPEG/PNG have no georeferencing, and need none
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                return src.read()
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc


@dataclass
class Scene:
    """A labelled image: raw bands (bands, h, w) and labels as channel indices (h, w)."""

    name: str
    image: np.ndarray
    labels: np.ndarray

    @property
    def height(self) -> int:
        """Rows."""
        return int(self.labels.shape[0])

    @property
    def width(self) -> int:
        """Columns."""
        return int(self.labels.shape[1])

    def read(self, row: int, col: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """A window of the scene (clipped to it)."""
        return self.image[:, row : row + h, col : col + w], self.labels[
            row : row + h, col : col + w
        ]


def _to_indices(
    mask: np.ndarray, lookup: np.ndarray, codes: Sequence[int], where: str
) -> np.ndarray:
    values = np.unique(mask)
    unknown = [
        int(v) for v in values if v != IGNORE_INDEX and (v > 255 or lookup[v] == IGNORE_INDEX)
    ]
    if unknown:
        raise InputError(
            f"{where}: mask values {unknown} are not class codes {list(codes)} or 255 (ignore)"
        )
    return lookup[mask.astype(np.int64)]


def pairs_folder(folder: Path, codes: Sequence[int], bands: int | None = None) -> list[Scene]:
    """Every ``<stem>.<ext>`` with a ``<stem>_mask.<png|tif>`` under ``folder``.

    ``<name>_image.<ext>`` + ``<name>_mask.<ext>`` pairs count too (as in the NAIP chips).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"training images folder not found: {folder}")
    lookup = code_lookup(codes)
    scenes = []
    for image_path in sorted(folder.rglob("*")):
        if image_path.suffix.lower() not in IMAGE_SUFFIXES or image_path.stem.endswith("_mask"):
            continue
        stems = [image_path.stem]
        if image_path.stem.endswith("_image"):  # <name>_image.tif + <name>_mask.tif
            stems.append(image_path.stem[: -len("_image")])
        masks = [image_path.with_name(f"{stem}_mask{s}") for stem in stems for s in MASK_SUFFIXES]
        mask_path = next((m for m in masks if m.exists()), None)
        if mask_path is None:
            continue
        image = _read_plain(image_path)
        mask = _read_plain(mask_path)[0]
        if image.shape[1:] != mask.shape:
            raise InputError(
                f"{image_path.name} is {image.shape[2]}×{image.shape[1]} but its mask is "
                f"{mask.shape[1]}×{mask.shape[0]}"
            )
        if bands is not None:
            if image.shape[0] < bands:
                raise InputError(f"{image_path.name} has {image.shape[0]} bands, {bands} needed")
            image = image[:bands]
        labels = _to_indices(mask, lookup, codes, mask_path.name)
        scenes.append(Scene(str(image_path.relative_to(folder)), image, labels))
    if not scenes:
        raise InputError(f"no image/mask pairs (<name>.jpg + <name>_mask.png) in {folder}")
    return scenes


def raster_scene(image_path: Path, label_path: Path, codes: Sequence[int]) -> Scene:
    """(b) a georeferenced raster + a label raster on the same grid."""
    import rasterio

    with rasterio.open(image_path) as image, rasterio.open(label_path) as label:
        if (image.crs, image.transform, image.shape) != (label.crs, label.transform, label.shape):
            raise InputError(f"{label_path.name} is not on the grid of {image_path.name}")
        return Scene(
            image_path.name,
            image.read(),
            _to_indices(label.read(1), code_lookup(codes), codes, label_path.name),
        )


def polygon_scene(
    image_path: Path, polygons: Any, field: str, mapping: dict[Any, int], codes: Sequence[int]
) -> Scene:
    """(c) a raster + polygons (GeoDataFrame) whose ``field`` maps to class codes via ``mapping``.

    Polygons are reprojected to the raster's CRS; unlabelled pixels are ignore.
    """
    import rasterio
    from rasterio.features import rasterize

    unmapped = sorted({str(v) for v in polygons[field].unique() if v not in mapping})
    if unmapped:
        raise InputError(f"values of {field!r} without a class: {', '.join(unmapped)}")
    with rasterio.open(image_path) as src:
        if polygons.crs is not None and src.crs is not None:
            polygons = polygons.to_crs(src.crs)
        lookup = code_lookup(codes)
        shapes = [(g, int(lookup[mapping[v]])) for g, v in zip(polygons.geometry, polygons[field])]
        labels = rasterize(
            shapes, out_shape=src.shape, transform=src.transform, fill=IGNORE_INDEX, dtype="uint8"
        )
        if (labels != IGNORE_INDEX).sum() == 0:
            raise InputError(f"no labelled polygon overlaps {image_path.name}")
        return Scene(image_path.name, src.read(), labels)


def dhash(image: np.ndarray) -> int:
    """64-bit difference hash of an image (first band), for near-duplicate detection."""
    small = resize_bilinear(image[:1].astype(np.float32), 9)[0][:8]  # 8 rows × 9 columns
    bits = (small[:, 1:] > small[:, :-1]).ravel()
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def near_duplicates(scenes: Sequence[Scene], max_distance: int = 4) -> list[tuple[str, str]]:
    """Pairs of scenes whose difference hashes differ in at most ``max_distance`` bits."""
    hashes = [dhash(s.image) for s in scenes]
    return [
        (scenes[i].name, scenes[j].name)
        for i in range(len(scenes))
        for j in range(i + 1, len(scenes))
        if bin(hashes[i] ^ hashes[j]).count("1") <= max_distance
    ]


def class_pixel_counts(scenes: Sequence[Scene], classes: int) -> np.ndarray:
    """Labelled pixels per class over all scenes."""
    counts = np.zeros(classes, np.int64)
    for scene in scenes:
        counts += np.bincount(scene.labels.ravel(), minlength=256)[:classes]
    return counts


class PatchSampler:
    """Cuts (image, labels) patches: random (training) or a fixed grid (validation)."""

    def __init__(
        self,
        scenes: Sequence[Scene],
        patch: int,
        normalize: Any,
        value_range: float,
        augment: bool,
        max_ignore: float = 0.5,
    ) -> None:
        self.scenes = list(scenes)
        self.patch = patch
        self.normalize = normalize
        self.value_range = value_range
        self.augment = augment
        self.max_ignore = max_ignore
        areas = np.asarray([s.height * s.width for s in self.scenes], np.float64)
        self.weights = areas / areas.sum()

    def random_patch(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One random patch; scale 0.5–2× and the other augmentations when enabled."""
        for _ in range(20):  # patches that are mostly ignore teach nothing: draw again
            scene = self.scenes[rng.choice(len(self.scenes), p=self.weights)]
            scale = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0)))) if self.augment else 1.0
            size = max(8, min(round(self.patch / scale), scene.height, scene.width))
            row = int(rng.integers(scene.height - size + 1))
            col = int(rng.integers(scene.width - size + 1))
            image, labels = scene.read(row, col, size, size)
            if (labels == IGNORE_INDEX).mean() <= self.max_ignore:
                break
        image = resize_bilinear(image, self.patch)
        labels = resize_nearest(labels, self.patch)
        if self.augment:
            image, labels = geometric(image, labels, rng)
            image = photometric(image, self.value_range, rng)
        return self.normalize(image), labels

    def grid_patches(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Non-overlapping patches covering every scene (edges flush), no augmentation."""
        from segment_plugin.engine.tiling import tile_origins

        out = []
        for scene in self.scenes:
            size = min(self.patch, scene.height, scene.width)
            for row in tile_origins(scene.height, size, size):
                for col in tile_origins(scene.width, size, size):
                    image, labels = scene.read(row, col, size, size)
                    if (labels != IGNORE_INDEX).any():
                        out.append(
                            (
                                self.normalize(resize_bilinear(image, self.patch)),
                                resize_nearest(labels, self.patch),
                            )
                        )
        return out
