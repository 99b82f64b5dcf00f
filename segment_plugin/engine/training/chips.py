"""Labelled scenes and the patches cut from them for training and validation.

Three sources, one interface (``Scene.read``): (a) a folder of image/mask pairs
(``<stem>.<ext>`` + ``<stem>_mask.png|tif``, as in ../shared/data/landcover), (b) a georeferenced
raster with a class raster (resampled onto its grid when needed), (c) a raster with a polygon
layer whose class field is rasterised on the raster's grid (pixels outside every polygon are
ignore, so sparse digitising works). Masks hold class *codes*; they become channel indices
(255 = ignore) through one lookup table, and codes outside the class list are refused with a
clear message.

A folder with a ``labels.json`` (``{"labelled": [4], "other": 0}``) is partially labelled: its
masks name only those classes, and the ``other`` code means "some class not named here"
(``OTHER_INDEX`` in the scene's labels; the loss takes the marginal there, see losses.py).
Each scene knows its ground resolution where it can (a georeferenced image, or the source's
``gsd_m``); patches are then cut at the model's resolution, whatever the source's.
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from segment_plugin.engine import outputs
from segment_plugin.engine.errors import InputError
from segment_plugin.engine.models.package import Normalization
from segment_plugin.engine.normalize import BandStats, band_stats, gain_limited, stretched_image
from segment_plugin.engine.params import CONTRAST, OTHER_LABEL
from segment_plugin.engine.raster_io import (
    RESAMPLE_TOLERANCE,
    model_resolution_for,
    pixel_size_m,
)
from segment_plugin.engine.training.augment import (
    geometric,
    photometric,
    resize_bilinear,
    resize_nearest,
)
from segment_plugin.engine.training.losses import other_target
from segment_plugin.engine.training.metrics import IGNORE_INDEX, OTHER_INDEX

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
MASK_SUFFIXES = (".png", ".tif", ".tiff")
LABELS_FILE = "labels.json"


def code_lookup(codes: Sequence[int]) -> np.ndarray:
    """256-entry table: class code → channel index, everything else → IGNORE_INDEX."""
    table = np.full(256, IGNORE_INDEX, np.uint8)
    for index, code in enumerate(codes):
        table[code] = index
    return table


def _read_plain(path: Path) -> tuple[np.ndarray, float | None]:
    """The pixels, and the ground resolution in metres when the file is in a projected CRS."""
    import rasterio

    try:
        with warnings.catch_warnings():  # plain JPEG/PNG have no georeferencing, and need none
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                return src.read(), ground_resolution(src)
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc


def ground_resolution(dataset: Any) -> float | None:
    """Metres per pixel of a georeferenced raster (mean of x and y), else None."""
    size = pixel_size_m(dataset)
    return (size[0] + size[1]) / 2 if size else None


def scale_to(gsd: float | None, resolution: float | None) -> float:
    """Pixels at the model's ``resolution`` per pixel of ``gsd`` (1 if either is unknown)."""
    if resolution is None or gsd is None:
        return 1.0
    return gsd / model_resolution_for(gsd, resolution)


@dataclass
class Scene:
    """A labelled image: raw bands (bands, h, w) and labels as channel indices (h, w).

    ``labelled``: the class indices a partially labelled scene names (its other pixels hold
    OTHER_INDEX); None: fully labelled. ``gsd``: metres per pixel, None when unknown.
    ``source``: the training source it belongs to (validation is reported per source).
    """

    name: str
    image: np.ndarray
    labels: np.ndarray
    labelled: tuple[int, ...] | None = None
    gsd: float | None = None
    source: str = ""

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

    def loss_targets(self, labels: np.ndarray) -> np.ndarray:
        """Labels as the loss reads them: *other* pixels carry the set's labelled classes."""
        if self.labelled is None:
            return labels
        targets = labels.astype(np.int32)
        targets[labels == OTHER_INDEX] = other_target(self.labelled)
        return targets

    def at_resolution(self, target: float | None) -> Scene:
        """This scene resampled to ``target`` metres per pixel (itself if either is unknown)."""
        factor = scale_to(self.gsd, target)
        if abs(factor - 1) <= RESAMPLE_TOLERANCE:
            return self
        shape = (max(1, round(self.height * factor)), max(1, round(self.width * factor)))
        image = resize_bilinear(self.image, shape)
        if np.issubdtype(self.image.dtype, np.integer):
            image = np.rint(image).astype(self.image.dtype)
        return replace(
            self, image=image, labels=resize_nearest(self.labels, shape), gsd=self.gsd / factor
        )


def pooled_stats(scenes: Sequence[Scene], low: float, high: float) -> BandStats:
    """Band statistics of several scenes together, from a strided sample of each.

    Memory stays bounded, as segment's statistics come from a decimated read.
    """
    samples = [s.image[:, ::4, ::4].reshape(s.image.shape[0], -1) for s in scenes]
    return band_stats(np.concatenate(samples, axis=1), low, high)


def stretched_scenes(
    scenes: Sequence[Scene], groups: Sequence[str], norm: Normalization
) -> list[Scene]:
    """Each scene stretched as ``segment`` stretches a raster, as ``norm`` says.

    By the band percentiles of its group pooled: the images cut from one larger scene are
    stretched as ``segment`` would stretch that scene, an image of its own group by its own.
    """
    members: dict[str, list[Scene]] = {}
    for scene, group in zip(scenes, groups):
        members.setdefault(group, []).append(scene)
    stats = {
        group: gain_limited(pooled_stats(m, norm.low, norm.high), norm, str(m[0].image.dtype))
        for group, m in members.items()
    }
    return [
        replace(scene, image=stretched_image(scene.image, stats[group]))
        for scene, group in zip(scenes, groups)
    ]


def _to_indices(
    mask: np.ndarray, lookup: np.ndarray, codes: Sequence[int], where: str
) -> np.ndarray:
    values = np.unique(mask)
    unknown = [
        int(v)
        for v in values
        if v != IGNORE_INDEX and (v > 255 or v < 0 or lookup[int(v)] == IGNORE_INDEX)
    ]
    if unknown:
        raise InputError(
            f"{where}: mask values {unknown} are not class codes {list(codes)} or 255 (ignore)"
        )
    return lookup[mask.astype(np.int64)]


def label_spec(folder: Path, codes: Sequence[int]) -> tuple[tuple[int, ...] | None, int | None]:
    """A folder's ``labels.json``: (labelled class indices, the *other* code); (None, None) if none.

    Checked against the class codes, so a set naming a class the model lacks is refused by name.
    """
    path = Path(folder) / LABELS_FILE
    if not path.is_file():
        return None, None
    try:
        spec = json.loads(path.read_text())
        labelled = [int(c) for c in spec["labelled"]]
        other = int(spec.get("other", 0))
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f'{path}: expected {{"labelled": [class codes], "other": code}} ({exc})'
        ) from exc
    unknown = [c for c in labelled if c not in codes]
    if unknown or other in labelled or not labelled or not 0 <= other < IGNORE_INDEX:
        raise InputError(
            f"{path}: labelled {labelled} must be class codes of {list(codes)}, and other "
            f"{other} another value below 255"
        )
    return tuple(list(codes).index(c) for c in labelled), other


def pairs_folder(
    folder: Path,
    codes: Sequence[int],
    bands: int | None = None,
    gsd: float | None = None,
    source: str = "",
    select: Callable[[str], bool] | None = None,
) -> list[Scene]:
    """Every ``<stem>.<ext>`` with a ``<stem>_mask.<png|tif>`` under ``folder``.

    ``<name>_image.<ext>`` + ``<name>_mask.<ext>`` pairs count too (as in the NAIP chips). A
    ``labels.json`` in ``folder`` makes its scenes partially labelled; ``gsd`` (metres) is the
    resolution of images that are not georeferenced. ``select``: only the images whose name
    (path inside ``folder``) it accepts are read.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"training images folder not found: {folder}")
    labelled, other = label_spec(folder, codes)
    lookup = code_lookup(codes)
    if other is not None:
        lookup[other] = OTHER_INDEX
    scenes = []
    for image_path in sorted(folder.rglob("*")):
        if image_path.suffix.lower() not in IMAGE_SUFFIXES or image_path.stem.endswith("_mask"):
            continue
        if select is not None and not select(str(image_path.relative_to(folder))):
            continue
        stems = [image_path.stem]
        if image_path.stem.endswith("_image"):  # <name>_image.tif + <name>_mask.tif
            stems.append(image_path.stem[: -len("_image")])
        masks = [image_path.with_name(f"{stem}_mask{s}") for stem in stems for s in MASK_SUFFIXES]
        mask_path = next((m for m in masks if m.exists()), None)
        if mask_path is None:
            continue
        image, own_gsd = _read_plain(image_path)
        mask = _read_plain(mask_path)[0][0]
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
        name = str(image_path.relative_to(folder))
        scenes.append(Scene(name, image, labels, labelled, own_gsd or gsd, source))
    if not scenes:
        raise InputError(f"no image/mask pairs (<name>.jpg + <name>_mask.png) in {folder}")
    return scenes


def rasterize_labels(
    dataset: Any, polygons: Any, field: str, mapping: dict[Any, int] | None
) -> np.ndarray:
    """Class codes (h, w) of polygons on the raster's grid; 255 outside every polygon.

    ``mapping`` turns field values (compared as text) into class codes; None: the values are
    codes. Polygons in another CRS are reprojected first.
    """
    from rasterio.features import rasterize

    if field not in polygons.columns:
        fields = ", ".join(str(c) for c in polygons.columns if c != "geometry")
        raise InputError(f"the label layer has no field {field!r} (fields: {fields})")
    if polygons.empty:
        raise InputError("the label layer has no polygons (an empty selection?)")
    if polygons.crs is not None and dataset.crs is not None and polygons.crs != dataset.crs:
        polygons = polygons.to_crs(dataset.crs)
    if mapping is None:
        try:
            codes = [int(v) for v in polygons[field]]
        except (TypeError, ValueError) as exc:
            raise InputError(f"values of {field!r} are not class codes: give a mapping") from exc
    else:
        values = sorted({str(v) for v in polygons[field]})
        text = _text_mapping(mapping, values, f"values of {field!r}")
        codes = [int(text[str(v)]) for v in polygons[field]]
    labels = rasterize(
        list(zip(polygons.geometry, codes)),
        out_shape=dataset.shape,
        transform=dataset.transform,
        fill=IGNORE_INDEX,
        dtype="uint8",
    )
    if (labels != IGNORE_INDEX).sum() == 0:
        raise InputError(f"no labelled polygon overlaps {Path(dataset.name).name}")
    return labels


def _text_mapping(mapping: dict[Any, int], values: Sequence[Any], what: str) -> dict[str, int]:
    """``mapping`` keyed by text (how label values are compared); unmapped values refused."""
    text = {str(k): OTHER_INDEX if v == OTHER_LABEL else int(v) for k, v in mapping.items()}
    beyond = [f"{k} → {v}" for k, v in text.items() if not 0 <= v <= IGNORE_INDEX]
    if beyond:
        raise InputError(f"the mapping's {', '.join(beyond)}: class codes are 0–254, 255 ignore")
    unmapped = list(dict.fromkeys(str(v) for v in values if str(v) not in text))
    if unmapped:
        raise InputError(f"{what} without a class: {', '.join(unmapped)}")
    return text


def _mapped(values: np.ndarray, mapping: dict[Any, int] | None, where: str) -> np.ndarray:
    """Label raster values → class codes through ``mapping`` (keys compared as text)."""
    if mapping is None:
        return values
    present = [v for v in np.unique(values) if v != IGNORE_INDEX]
    text = _text_mapping(mapping, present, f"{where}: values")
    table = np.full(max(int(values.max()), 255) + 1, IGNORE_INDEX, np.uint8)
    for value in present:
        table[int(value)] = text[str(value)]
    return table[values.astype(np.int64)]


def label_raster_on_grid(dataset: Any, label_path: Path, mapping: dict[Any, int] | None) -> Any:
    """Class codes (h, w) of a class raster on ``dataset``'s grid; 255 where it has no value.

    A class raster on another grid or in another CRS is resampled with nearest neighbour (class
    codes must not be averaged); one without georeferencing must match the image's size.
    """
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    name = Path(label_path).name
    try:
        label = rasterio.open(label_path)
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"cannot read the label raster {label_path}: {exc}") from exc
    with label:
        same_grid = (label.crs, label.transform, label.shape) == (
            dataset.crs,
            dataset.transform,
            dataset.shape,
        )
        if same_grid:
            values = label.read(1)
            nodata = label.nodata
        elif label.crs is None or dataset.crs is None:
            raise InputError(f"{name} is not on the grid of {Path(dataset.name).name}")
        else:
            nodata = label.nodata if label.nodata is not None else IGNORE_INDEX
            with WarpedVRT(
                label,
                crs=dataset.crs,
                transform=dataset.transform,
                width=dataset.width,
                height=dataset.height,
                resampling=Resampling.nearest,
                src_nodata=nodata,
                nodata=nodata,
            ) as warped:
                values = warped.read(1)
    if nodata is not None:
        values = np.where(values == nodata, IGNORE_INDEX, values)
    values = _mapped(values, mapping, name)
    if (values == IGNORE_INDEX).all():
        raise InputError(f"the label raster {name} does not overlap {Path(dataset.name).name}")
    return values


def labels_on_grid(
    dataset: Any, labels: Path, field: str | None, mapping: dict[Any, int] | None
) -> np.ndarray:
    """Class codes on ``dataset``'s grid from polygons (with ``field``) or a class raster."""
    if field:
        return rasterize_labels(dataset, read_polygons(labels), field, mapping)
    return label_raster_on_grid(dataset, labels, mapping)


def labelled_scene(
    image_path: Path,
    labels: Path,
    field: str | None,
    mapping: dict[Any, int | str] | None,
    codes: Sequence[int],
) -> Scene:
    """(b)/(c) a raster + its labels: a polygon layer's class ``field`` or a class raster.

    Labelled where digitised, ignore elsewhere, so sparse labels work. Values mapped to "other"
    make the scene partially labelled: they are some class *not* among those mapped.
    """
    import rasterio

    lookup = code_lookup(codes)
    named = [v for v in (mapping or {}).values() if v != OTHER_LABEL]
    foreign = sorted({int(v) for v in named} - set(codes) - {IGNORE_INDEX})
    if foreign:
        raise InputError(
            f"the mapping gives {foreign}, which are not class codes {list(codes)} or 255 (ignore)"
        )
    labelled = None
    if mapping and len(named) < len(mapping):
        lookup[OTHER_INDEX] = OTHER_INDEX
        labelled = tuple(sorted({list(codes).index(c) for c in named if c in codes}))
        if not labelled:
            raise InputError('a mapping to "other" needs at least one value mapped to a class')
    with rasterio.open(image_path) as src:
        values = labels_on_grid(src, labels, field, mapping)
        where = field or Path(labels).name
        return Scene(
            Path(image_path).name,
            src.read(),
            _to_indices(values, lookup, codes, where),
            labelled=labelled,
            gsd=ground_resolution(src),
        )


def read_polygons(path: Path) -> Any:
    """A polygon layer (shapefile, GeoPackage, GeoJSON…) as a GeoDataFrame."""
    import geopandas as gpd

    try:
        return gpd.read_file(path)
    except Exception as exc:  # noqa: BLE001 - pyogrio/fiona raise several types
        raise InputError(f"cannot read the label layer {path}: {exc}") from exc


MIN_LABELLED = 256  # pixels on each side of a validation split


def split_by_area(scene: Scene, fraction: float) -> tuple[Scene, Scene]:
    """Training and validation by area: the columns holding the last ``fraction`` of labels.

    Neighbouring pixels are not independent, so validation pixels must not sit among training
    pixels; each returned scene keeps the whole image but only its own side's labels.
    """
    labelled = scene.labels != IGNORE_INDEX
    per_column = labelled.sum(axis=0)
    total = int(per_column.sum())
    cut = int(np.searchsorted(np.cumsum(per_column), total * (1 - fraction)))
    val_pixels = int(per_column[cut:].sum())
    if min(total - val_pixels, val_pixels) < MIN_LABELLED:
        raise InputError(
            f"too few labelled pixels for a validation split ({total} labelled, {val_pixels} would "
            "validate): digitise more polygons, lower the validation share or give --val-images"
        )
    train_labels = scene.labels.copy()
    train_labels[:, cut:] = IGNORE_INDEX
    val_labels = np.full_like(scene.labels, IGNORE_INDEX)
    val_labels[:, cut:] = scene.labels[:, cut:]
    return (
        replace(scene, name=f"{scene.name} (training area)", labels=train_labels),
        replace(
            scene,
            name=f"{scene.name} (validation area: columns {cut}–{scene.width})",
            labels=val_labels,
        ),
    )


def export_chips(
    raster: Path,
    labels: Path,
    field: str | None,
    mapping: dict[Any, int] | None,
    folder: Path,
    patch: int,
) -> list[Path]:
    """Georeferenced chip pairs (``chip_R_C.tif`` + ``chip_R_C_mask.tif``) where labels exist.

    Written into a staging folder moved in at the end: a refused, failed or cancelled run leaves
    no folder and no partial set.
    """
    import rasterio
    from rasterio.windows import Window
    from rasterio.windows import transform as window_transform

    from segment_plugin.engine.tiling import tile_origins

    written = []
    with outputs.committed_folder(folder) as staging, rasterio.open(raster) as src:
        codes = labels_on_grid(src, labels, field, mapping)
        size = min(patch, src.height, src.width)
        for row in tile_origins(src.height, size, size):
            for col in tile_origins(src.width, size, size):
                window = Window(col, row, size, size)
                mask = codes[row : row + size, col : col + size]
                if (mask == IGNORE_INDEX).all():
                    continue
                profile = dict(
                    src.profile,
                    width=size,
                    height=size,
                    transform=window_transform(window, src.transform),
                    driver="GTiff",
                )
                stem = staging / f"chip_{row:06d}_{col:06d}"
                with rasterio.open(stem.with_suffix(".tif"), "w", **profile) as dst:
                    dst.write(src.read(window=window))
                mask_profile = dict(profile, count=1, dtype="uint8", nodata=None, photometric=None)
                mask_profile.pop("photometric")
                with rasterio.open(f"{stem}_mask.tif", "w", **mask_profile) as dst:
                    dst.write(mask, 1)
                written.append(folder / f"{stem.name}.tif")
        if not written:
            raise InputError("no labelled pixels: no chips written")
        values = list((mapping or {}).values())
        if OTHER_LABEL in values:  # the chips are partially labelled, and say so
            named = sorted({int(v) for v in values if v not in (OTHER_LABEL, IGNORE_INDEX)})
            spec = {"labelled": named, "other": OTHER_INDEX, "note": "written by export-chips"}
            (staging / LABELS_FILE).write_text(json.dumps(spec, indent=2))
    return written


def dhash(image: np.ndarray) -> int:
    """64-bit difference hash of an image (first band), for near-duplicate detection."""
    small = resize_bilinear(image[:1].astype(np.float32), 9)[0][:8]  # 8 rows × 9 columns
    bits = (small[:, 1:] > small[:, :-1]).ravel()
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def near_duplicates(scenes: Sequence[Scene], max_distance: int = 4) -> list[tuple[str, str]]:
    """Pairs of scenes whose difference hashes differ in at most ``max_distance`` bits.

    The training and validation areas of one raster share its image and are not duplicates.
    """
    hashes = [dhash(s.image) for s in scenes]
    return [
        (scenes[i].name, scenes[j].name)
        for i in range(len(scenes))
        for j in range(i + 1, len(scenes))
        if scenes[i].image is not scenes[j].image
        and bin(hashes[i] ^ hashes[j]).count("1") <= max_distance
    ]


def class_pixel_counts(
    scenes: Sequence[Scene], classes: int, source_weights: dict[str, float] | None = None
) -> np.ndarray:
    """Labelled pixels per class over all scenes.

    With ``source_weights``, each source's counts are scaled to its share of the patches (per
    labelled or *other* pixel of that source): the class frequencies training will see.
    """
    per_source: dict[str, np.ndarray] = {}
    for scene in scenes:
        counts = np.bincount(scene.labels.ravel(), minlength=256)
        per_source.setdefault(scene.source, np.zeros(256, np.int64))
        per_source[scene.source] += counts
    if not source_weights:
        return sum(per_source.values(), np.zeros(256, np.int64))[:classes]
    total = np.zeros(classes, np.float64)
    for name, counts in per_source.items():
        known = counts[:classes].sum() + counts[OTHER_INDEX]
        if known:
            total += source_weights.get(name, 0.0) * counts[:classes] / known
    return total


#: labelled pixels per scene that count for drawing it (and anchor positions kept)
ANCHORS_PER_SCENE = 200_000


def scene_weights(
    labelled_pixels: Sequence[int],
    sources: Sequence[str],
    source_weights: dict[str, float] | None,
) -> np.ndarray:
    """The chance of drawing each scene, from its labelled pixels and its source's name.

    Within a source, in proportion to its labelled pixels up to ANCHORS_PER_SCENE, so large
    images do not crowd out small ones. Measured on the bundled model's data: drawn by full
    area, Dubai tile 7 gave 48 % of the patches and NAIP 1.5 %; a 30-epoch restart so trained
    gained 0.008 mIoU on Dubai tile 8 (within epoch-to-epoch noise) but lost elsewhere. Between
    sources, by ``source_weights`` (name → share; None: all scenes in one pool), so that a large
    source (the 146 Mpx forest set) does not drown a small one with more classes.
    """
    counts = np.minimum(np.asarray(labelled_pixels, np.float64), ANCHORS_PER_SCENE)
    if counts.sum() == 0:
        raise InputError("the training data has no labelled pixels")
    if not source_weights:
        return counts / counts.sum()
    weights = np.zeros_like(counts)
    names = list(sources)
    for name, share in source_weights.items():
        members = np.asarray([n == name for n in names])
        total = counts[members].sum()
        if total > 0:
            weights[members] = share * counts[members] / total
    if weights.sum() == 0:
        raise InputError("no source with a weight has labelled pixels")
    return weights / weights.sum()


class PatchSampler:
    """Cuts (image, labels) patches: random (training) or a fixed grid (validation).

    Patches are cut at ``resolution`` metres per pixel from scenes whose resolution is known
    (a window of patch × resolution / gsd pixels, resized; a scene smaller than that is padded
    with ignore), else at the scene's own scale. Training augmentation jitters the scale 0.5–2×
    around that, and fills a patch that a crop covers at most half of each way with a mosaic of
    crops of the same source (a 300 px drone chip at 0.5 m is 60 px: padded, 95 % of its patch
    taught nothing).
    """

    def __init__(
        self,
        scenes: Sequence[Scene],
        patch: int,
        normalize: Any,
        value_range: float,
        augment: bool,
        max_ignore: float = 0.5,
        resolution: float | None = None,
        source_weights: dict[str, float] | None = None,
        contrast: tuple[float, float] = CONTRAST,
    ) -> None:
        self.scenes = list(scenes)
        self.contrast = contrast
        self.patch = patch
        self.normalize = normalize
        self.value_range = value_range
        self.augment = augment
        self.max_ignore = max_ignore
        self.resolution = resolution
        # patches are placed around labelled pixels (a sample of their positions per scene), so
        # sparse digitising still gives patches that teach something
        rng = np.random.default_rng(0)
        self.anchors = []
        self.labelled_pixels = []  # per scene, all of them (the anchors are a sample)
        for scene in self.scenes:
            rows, cols = np.nonzero(scene.labels != IGNORE_INDEX)
            keep = rng.choice(rows.size, size=min(rows.size, ANCHORS_PER_SCENE), replace=False)
            self.anchors.append((rows[keep], cols[keep]))
            self.labelled_pixels.append(rows.size)
        self.weights = scene_weights(
            self.labelled_pixels, [s.source for s in self.scenes], source_weights
        )
        # the scenes a mosaic may mix with each one: same source, same labelled classes
        groups: dict[tuple, list[int]] = {}
        for k, scene in enumerate(self.scenes):
            groups.setdefault((scene.source, scene.labelled), []).append(k)
        self.mates: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for members in groups.values():
            chance = self.weights[members]
            if chance.sum() > 0:  # else none of them is ever drawn
                for k in members:
                    self.mates[k] = (np.asarray(members), chance / chance.sum())

    def with_patch(self, patch: int) -> PatchSampler:
        """The same sampler cutting patches of another size (the scenes and anchors shared)."""
        other = copy.copy(self)
        other.patch = patch
        return other

    def scale_of(self, scene: Scene) -> float:
        """Output pixels per scene pixel before augmentation."""
        return scale_to(scene.gsd, self.resolution)

    def random_patch(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One random patch; scale 0.5–2×, mosaics and the other augmentations when enabled."""
        for _ in range(20):  # patches that are mostly ignore teach nothing: draw again
            k = int(rng.choice(len(self.scenes), p=self.weights))
            jitter = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0)))) if self.augment else 1.0
            scale = self.scale_of(self.scenes[k]) * jitter
            image, labels = self._crop(k, scale, rng)
            if (labels == IGNORE_INDEX).mean() <= self.max_ignore:
                break
        image, labels = self._scaled(image, self.scenes[k].loss_targets(labels), scale)
        if self.augment:
            image, labels = self._mosaic(k, image, labels, scale, rng)
        image, labels = _padded(image, labels, (self.patch, self.patch))
        if self.augment:
            image, labels = geometric(image, labels, rng)
            image = photometric(image, self.value_range, rng, self.contrast)
        return self.normalize(image), labels

    def _crop(
        self, k: int, scale: float, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """A window of scene ``k`` around a labelled pixel: at most a patch at ``scale``."""
        scene, (rows, cols) = self.scenes[k], self.anchors[k]
        size = max(8, round(self.patch / scale))
        h, w = min(size, scene.height), min(size, scene.width)
        anchor = int(rng.integers(rows.size))  # a labelled pixel somewhere inside the crop
        row = int(np.clip(rows[anchor] - rng.integers(h), 0, scene.height - h))
        col = int(np.clip(cols[anchor] - rng.integers(w), 0, scene.width - w))
        return scene.read(row, col, h, w)

    def _scaled(
        self, image: np.ndarray, labels: np.ndarray, scale: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """A window resized by ``scale``, at most the patch."""
        h, w = labels.shape
        shape = (
            min(self.patch, max(1, round(h * scale))),
            min(self.patch, max(1, round(w * scale))),
        )
        return resize_bilinear(image, shape), resize_nearest(labels, shape)

    def _mosaic(
        self, k: int, image: np.ndarray, labels: np.ndarray, scale: float, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """A grid of crops at ``scale``: scene ``k``'s in the first cell, its mates' in the rest.

        As many whole cells as the patch holds; the crop alone when that is one.
        """
        cell = labels.shape
        grid = (self.patch // cell[0], self.patch // cell[1])
        if grid[0] * grid[1] < 2:
            return image, labels
        members, chance = self.mates[k]
        out_image = np.empty((image.shape[0], grid[0] * cell[0], grid[1] * cell[1]), np.float32)
        out_labels = np.empty((grid[0] * cell[0], grid[1] * cell[1]), labels.dtype)
        for r in range(grid[0]):
            for c in range(grid[1]):
                if r or c:
                    j = int(rng.choice(members, p=chance))
                    image, labels = self._crop(j, scale, rng)
                    image, labels = self._scaled(image, self.scenes[j].loss_targets(labels), scale)
                    image, labels = _padded(
                        image[:, : cell[0], : cell[1]], labels[: cell[0], : cell[1]], cell
                    )
                rows, cols = (
                    slice(r * cell[0], (r + 1) * cell[0]),
                    slice(c * cell[1], (c + 1) * cell[1]),
                )
                out_image[:, rows, cols] = image
                out_labels[rows, cols] = labels
        return out_image, out_labels

    def _to_patch(
        self, image: np.ndarray, labels: np.ndarray, scale: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """A window resized by ``scale`` (at most the patch), padded to the patch with ignore."""
        return _padded(*self._scaled(image, labels, scale), (self.patch, self.patch))

    def grid_patches(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Non-overlapping patches covering every scene (edges flush), no augmentation."""
        from segment_plugin.engine.tiling import tile_origins

        out = []
        for scene in self.scenes:
            scale = self.scale_of(scene)
            size = min(max(8, round(self.patch / scale)), scene.height, scene.width)
            for row in tile_origins(scene.height, size, size):
                for col in tile_origins(scene.width, size, size):
                    image, labels = scene.read(row, col, size, size)
                    if (labels != IGNORE_INDEX).any():
                        image, labels = self._to_patch(image, labels, scale)
                        out.append((self.normalize(image), scene.loss_targets(labels)))
        return out


def _padded(
    image: np.ndarray, labels: np.ndarray, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """(image, labels) padded at the bottom and right to ``shape``: mirrored, and ignore."""
    pad = ((0, shape[0] - labels.shape[0]), (0, shape[1] - labels.shape[1]))
    if pad == ((0, 0), (0, 0)):
        return image, labels
    return (
        np.pad(image, ((0, 0), *pad), mode="symmetric"),
        np.pad(labels, pad, constant_values=IGNORE_INDEX),
    )
