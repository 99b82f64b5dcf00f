"""Typed parameter objects: one per job, shared by the CLI, Processing and the dialogs.

The QGIS side builds the same object's fields as command-line flags; the engine saves the object
as JSON next to what it wrote, so every output says how it was made.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from segment_plugin.engine.errors import InputError

PARAMS_SCHEMA_VERSION = 1
DEVICES = ("auto", "cpu", "gpu")
RUNTIMES = ("auto", "keras", "onnx")


def _check_runtime(runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise InputError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")


def _check_scheduler(scheduler: str | None, workers: int) -> None:
    if workers < 1:
        raise InputError(f"workers must be at least 1, got {workers}")
    if scheduler not in (None, "local") and "://" not in scheduler:
        raise InputError(
            f"--scheduler is 'local' or a Dask scheduler's address (tcp://host:port), "
            f"not {scheduler!r}"
        )


def _check_device(device: str) -> None:
    if device not in DEVICES:
        raise InputError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")


_P = TypeVar("_P", bound="JobParams")


def _plain(value: Any) -> Any:
    """Paths as strings, tuples as lists: what JSON holds."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class JobParams:
    """JSON round trip shared by every job's parameters (``JOB`` names the job)."""

    JOB: ClassVar[str] = ""

    def to_json(self) -> str:
        """The parameters as JSON, with the schema version and the job name."""
        data: dict[str, Any] = {"schema_version": PARAMS_SCHEMA_VERSION, "job": self.JOB}
        for key, value in asdict(self).items():  # type: ignore[call-overload]
            data[key] = _plain(value)
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls: type[_P], text: str) -> _P:
        """Read parameters written by :meth:`to_json`."""
        data = json.loads(text)
        if (
            data.pop("schema_version", None) != PARAMS_SCHEMA_VERSION
            or data.pop("job", None) != cls.JOB
        ):
            raise InputError(f"not a {cls.JOB} parameter file of this engine version")
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class SegmentParams(JobParams):
    """``segment-plugin segment``: raster in, class raster (and probabilities) out."""

    JOB: ClassVar[str] = "segment"

    input: Path
    output: Path
    model: str = "landcover"
    probabilities: Path | None = None
    vector: Path | None = None  # also polygonise the classes into this .shp/.gpkg
    bands: tuple[int, ...] | None = None  # 1-based input band per model band; None: from the card
    resolution: float | None = None  # metres per pixel to work at; None: the model's
    tile: int | None = None  # None: the model card's tile size
    overlap: int | None = None  # None: 3/8 of the tile (tiling.default_overlap)
    batch: int | None = None  # tiles per model call; None: tiling.default_batch of the tile
    device: str = "auto"
    runtime: str = "auto"  # keras, onnx, or auto: ONNX Runtime where the model has a model.onnx
    # Dask: "local" (a LocalCluster of `workers` processes) or a scheduler's tcp://host:port;
    # None: one process (the same plan, as one task)
    scheduler: str | None = None
    workers: int = 2
    tta: bool = False
    # keep the bias the loss's class weights gave the outputs (see inference.undo_class_weights)
    keep_class_weights: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        self.input = Path(self.input)
        self.output = Path(self.output)
        if self.probabilities is not None:
            self.probabilities = Path(self.probabilities)
        for flag, path in (("--output", self.output), ("--probabilities", self.probabilities)):
            if path is not None and path.suffix.lower() not in (".tif", ".tiff"):
                raise InputError(f"{flag} is written as a GeoTIFF: name it .tif, not {path.name}")
        if self.vector is not None:
            self.vector = Path(self.vector)
            if self.vector.suffix.lower() not in (".shp", ".gpkg"):
                raise InputError(f"--vector must be a .shp or .gpkg file, got {self.vector.name}")
        if self.bands is not None:
            self.bands = tuple(int(b) for b in self.bands)
        _check_device(self.device)
        _check_runtime(self.runtime)
        _check_scheduler(self.scheduler, self.workers)
        if self.batch is not None and self.batch < 1:
            raise InputError(f"batch must be at least 1, got {self.batch}")
        if self.tile is not None and self.tile < 16:
            raise InputError(f"tile must be at least 16 pixels, got {self.tile}")
        if self.overlap is not None and self.overlap < 0:
            raise InputError(f"overlap must not be negative, got {self.overlap}")
        if self.resolution is not None and not self.resolution > 0:
            raise InputError(f"resolution must be positive, got {self.resolution}")


@dataclass
class VectorizeParams(JobParams):
    """``segment-plugin vectorize``: class raster in, polygons (shapefile/GeoPackage) out."""

    JOB: ClassVar[str] = "vectorize"

    input: Path
    output: Path
    classes: tuple[int, ...] | None = None  # None: every class present
    min_area: float | None = None  # m²: regions smaller than this take their neighbour's class
    simplify: float | None = None  # metres: topology-preserving simplification tolerance
    smooth: bool = False  # 3×3 majority filter before polygonising
    layer: str | None = None  # GeoPackage layer name; None: the file's stem
    scheduler: str | None = None  # Dask, as for segment; None: one process
    workers: int = 2
    overwrite: bool = False

    def __post_init__(self) -> None:
        self.input = Path(self.input)
        self.output = Path(self.output)
        if self.classes is not None:
            self.classes = tuple(int(c) for c in self.classes)
        if self.output.suffix.lower() not in (".shp", ".gpkg"):
            raise InputError(f"the output must be a .shp or .gpkg file, got {self.output.name}")
        if self.min_area is not None and self.min_area < 0:
            raise InputError(f"min-area must not be negative, got {self.min_area}")
        if self.simplify is not None and self.simplify < 0:
            raise InputError(f"simplify must not be negative, got {self.simplify}")
        _check_scheduler(self.scheduler, self.workers)


LOSS_NAMES = ("ce", "dice", "focal", "lovasz", "ce+dice", "focal+dice", "ce+lovasz")
# auto: median_frequency, bounded for a fine-tune (training.train.FINE_TUNE_WEIGHT_BOUNDS);
# base: the base model's own weights (a fine-tune that keeps its classes)
CLASS_WEIGHT_SCHEMES = ("auto", "median_frequency", "inverse_sqrt_frequency", "none", "base")
#: the range of the training contrast jitter by default (train --contrast)
CONTRAST = (0.8, 1.2)


#: a label value mapped to this is "some class not mapped here" (partial labels: "not road")
OTHER_LABEL = "other"


def _read_mapping(text: str) -> dict[str, int | str]:
    """``{"house": 1, "field": "other"}`` from JSON text or a JSON file: value → class code."""
    source = Path(text)
    try:
        data = json.loads(source.read_text() if source.is_file() else text)
        return {
            str(k): OTHER_LABEL if str(v).lower() == OTHER_LABEL else int(v)
            for k, v in data.items()
        }
    except (ValueError, AttributeError, OSError) as exc:
        raise InputError(
            f'--mapping must be JSON like {{"house": 1, "meadow": "other"}}: {exc}'
        ) from exc


@dataclass
class TrainParams(JobParams):
    """``segment-plugin train``: labelled chips in, a model package out."""

    JOB: ClassVar[str] = "train"

    output: Path
    images: tuple[Path, ...] = ()  # folders of image/mask pairs …
    raster: Path | None = None  # … and/or a raster with
    labels: Path | None = None  # … a polygon layer (any OGR format) whose field holds
    field: str | None = None  # … the class, or a class raster (no field),
    # … mapped to class codes or "other" (None: values are codes)
    mapping: dict[str, int | str] | None = None
    val_images: Path | None = None  # None: split by image (pairs) or by area (raster + labels)
    # a sources file (training/sources.py): several sets, each with its GSD, share and hold-out
    sources: Path | None = None
    data_root: Path | None = None  # the sources' folders are relative to this (default: its folder)
    resolution: float | None = None  # metres per pixel to train at; default: the base model's
    base_model: str | None = None  # fine-tune this model package
    arch: str = "separable_unet"
    filters: int | None = None  # a new model's first-level width (doubles per level)
    classes: Path | None = None  # classes.json; default: the base model's classes
    bands: int | None = None  # default: the base model's, else the images'
    epochs: int = 20
    patch: int = 256
    # context jitter: steps cycle through these patch sizes, each batch scaled to the pixels of
    # `batch` patches of `patch`; () trains on `patch` alone (validation is always at `patch`)
    patch_sizes: tuple[int, ...] = ()
    tile_size: int | None = None  # the card's inference tile; default max(patch, 256)
    batch: int = 8
    steps_per_epoch: int | None = None  # None: about one pass over the training pixels
    # None: 1e-3 for a new model, 1e-4 for a fine-tune (as the Fine-tune dialog; 1e-3 undid
    # what a trained model knew within a few small-data steps)
    learning_rate: float | None = None
    loss: str = "ce+dice"
    class_weights: str = "auto"  # see CLASS_WEIGHT_SCHEMES
    freeze_encoder: bool = False
    # a fine-tune keeps its base's batch-normalisation statistics (inference mode) unless this:
    # updated from a few images they made a fine-tune worse (0.221 → 0.16 validation mIoU)
    train_batchnorm: bool = False
    # a fine-tune's partially labelled images: weight of the distillation toward the base's odds
    # among the classes an "other" pixel may be (losses.unnamed_distillation); 0: the marginal
    # loss alone, which let a roads-only fine-tune unlearn the other classes
    distill: float = 1.0
    # weight of context consistency (training/context.py): a patch's centre classed alone is
    # held to the whole patch's posteriors, for maps that change less with the tile size; 0: off
    consistency: float = 0.0
    # stretch each image's band percentiles to the full range before the model, in training
    # and (the card says so) at inference, for imagery whose contrast is unlike the training's
    stretch: bool = False
    # with stretch: widen no band's range by more than this (None: the base's limit, or none)
    stretch_max_gain: float | None = None
    augment: bool = True
    contrast: tuple[float, float] = CONTRAST  # the contrast jitter's range (augment.photometric)
    val_fraction: float = 0.2
    max_ignore: float = 0.5
    patience: int = 5
    seed: int = 0
    device: str = "auto"
    # threads cutting the augmented patches (None: devices.patch_workers chooses); the batches
    # do not depend on it
    workers: int | None = None
    name: str | None = None  # model name in its card; default: the output folder's name
    description: str = ""  # for the model card
    resume: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        self.images = tuple(Path(p) for p in self.images or ())
        self.output = Path(self.output)
        for name in ("raster", "labels"):
            if getattr(self, name) is not None:
                setattr(self, name, Path(getattr(self, name)))
        if isinstance(self.mapping, str):
            self.mapping = _read_mapping(self.mapping)
        for name in ("val_images", "classes", "sources", "data_root"):
            if getattr(self, name) is not None:
                setattr(self, name, Path(getattr(self, name)))
        if not self.images and self.raster is None and self.sources is None:
            raise InputError(
                "give --images DIR (image/mask pairs), --sources FILE or --raster R --labels L "
                "[--field F]"
            )
        if self.resolution is not None and not self.resolution > 0:
            raise InputError(f"resolution must be positive, got {self.resolution}")
        if self.learning_rate is None:
            self.learning_rate = 1e-4 if self.base_model else 1e-3
        if not self.distill >= 0:
            raise InputError(f"distill must be 0 or more, got {self.distill}")
        if not self.consistency >= 0:
            raise InputError(f"consistency must be 0 or more, got {self.consistency}")
        if self.consistency and (self.train_batchnorm or not self.base_model):
            # with batch statistics the centre and the whole patch are normalised apart: what
            # the term taught did not carry over to inference (docs/multisource-candidate.md)
            raise InputError(
                "--consistency needs batch normalisation in inference mode: a fine-tune "
                "(--base-model) without --train-batchnorm"
            )
        if self.stretch_max_gain is not None and not (self.stretch and self.stretch_max_gain >= 1):
            gain = self.stretch_max_gain
            raise InputError(f"stretch-max-gain goes with --stretch and is 1 or more, got {gain}")
        if not self.learning_rate > 0:
            raise InputError(f"learning-rate must be positive, got {self.learning_rate}")
        if self.raster is not None and self.labels is None:
            raise InputError(
                "--raster needs --labels: a polygon layer with --field (its class field), "
                "or a class raster"
            )
        if self.loss not in LOSS_NAMES:
            raise InputError(f"loss must be one of {', '.join(LOSS_NAMES)}, got {self.loss!r}")
        _check_device(self.device)
        if self.class_weights not in CLASS_WEIGHT_SCHEMES:
            raise InputError(
                f"class-weights must be one of {', '.join(CLASS_WEIGHT_SCHEMES)}, "
                f"got {self.class_weights!r}"
            )
        if self.class_weights == "base" and not self.base_model:
            raise InputError("class-weights base needs --base-model: they are its weights")
        if self.patch not in (128, 256, 512) and self.patch % 16:
            raise InputError(f"patch must be a multiple of 16 (128, 256, 512), got {self.patch}")
        if self.epochs < 1 or self.batch < 1 or (self.workers is not None and self.workers < 1):
            raise InputError("epochs, batch and workers must be at least 1")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise InputError(
                f"steps-per-epoch must be at least 1 (leave it out for the default), "
                f"got {self.steps_per_epoch}"
            )
        if self.patch < 32:
            raise InputError(f"patch must be at least 32 pixels, got {self.patch}")
        self.patch_sizes = tuple(int(size) for size in self.patch_sizes)
        self.contrast = tuple(float(v) for v in self.contrast)
        if len(self.contrast) != 2 or not 0 < self.contrast[0] <= self.contrast[1]:
            raise InputError(f"contrast must be LOW,HIGH with 0 < LOW <= HIGH, got {self.contrast}")
        if self.patch_sizes and min(self.patch_sizes) < 32:
            raise InputError(f"patch sizes must be at least 32 pixels, got {self.patch_sizes}")
        if self.filters is not None and (self.base_model or self.filters < 4):
            raise InputError(
                "--filters (at least 4) sets a new model's width; "
                "a fine-tuned model keeps its base model's"
            )
        if not 0 < self.val_fraction < 1:
            raise InputError(f"val-fraction must be between 0 and 1, got {self.val_fraction}")


@dataclass
class EvaluateParams(JobParams):
    """``segment-plugin evaluate``: a model against reference labels."""

    JOB: ClassVar[str] = "evaluate"

    model: str = "landcover"
    images: Path | None = None  # a folder of image/mask pairs …
    gsd: float | None = None  # … whose metres per pixel, if they are not georeferenced
    sources: Path | None = None  # … or a training sources file: each source's held-out images
    data_root: Path | None = None  # … its folders relative to this (default: its folder)
    raster: Path | None = None  # … or a raster to segment and
    reference: Path | None = None  # … its reference class raster
    prediction: Path | None = None  # … or an existing class raster, compared to the reference
    report: Path | None = None  # also write an HTML report
    tile: int | None = None
    runtime: str = "auto"  # as segment --runtime
    tta: bool = False  # as segment --tta: the mean over flipped copies
    keep_class_weights: bool = False  # as segment --keep-class-weights
    overwrite: bool = False

    def __post_init__(self) -> None:
        for name in ("images", "raster", "reference", "prediction", "report", "sources"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, Path(value))
        if self.data_root is not None:
            self.data_root = Path(self.data_root)
        given = [self.images, self.raster, self.prediction, self.sources]
        if len([v for v in given if v is not None]) != 1:
            raise InputError(
                "give either --images DIR, --raster R --reference REF, "
                "--prediction CLASSES --reference REF, or --sources FILE"
            )
        if self.sources is not None and self.report is not None:
            raise InputError("--report is for one set: not with --sources")
        if self.gsd is not None and (self.images is None or not self.gsd > 0):
            raise InputError("--gsd (positive, metres per pixel) is for --images only")
        if self.images is None and self.sources is None and self.reference is None:
            raise InputError("--raster and --prediction need --reference (the reference classes)")
        _check_runtime(self.runtime)
        for flag, value in (("--tta", self.tta), ("--keep-class-weights", self.keep_class_weights)):
            if value and self.prediction is not None:
                raise InputError(f"{flag} needs a model to run: not with --prediction")
