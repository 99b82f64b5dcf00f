"""The model package: a folder holding ``model.json`` (the model card) and the model.

The model is ``model.keras``, ``model.onnx`` or both (the same network; ONNX Runtime needs no
TensorFlow). The card is the contract between training and inference: which classes the output
channels are, which input bands in which order, how to normalise them, at which ground
resolution and tile size the model works, and how well it measured. Loading always uses Keras
``safe_mode=True`` (ONNX files go through ONNX Runtime only): a model file never gets to run code
of its own.
"""

from __future__ import annotations

import importlib.util
import json
import os
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from segment_plugin.engine.errors import DependencyError, ModelError
from segment_plugin.engine.info import FULL_ENGINE_HINT
from segment_plugin.engine.params import RUNTIMES

CARD_SCHEMA_VERSION = 1
MODEL_FILE = "model.keras"
ONNX_FILE = "model.onnx"
CARD_FILE = "model.json"
IGNORE_CODE = 255
NORMALIZATION_METHODS = ("scale", "meanstd", "percentile")


@dataclass(frozen=True)
class ClassInfo:
    """One output class: its code in the class raster, its name and colour (``#RRGGBB``)."""

    code: int
    name: str
    color: str

    def rgb(self) -> tuple[int, int, int]:
        """The colour as an (r, g, b) tuple."""
        value = self.color.lstrip("#")
        return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


@dataclass(frozen=True)
class Normalization:
    """How raw band values become model inputs.

    ``scale``: ``x * scale + offset``; ``meanstd``: ``(x - mean) / std`` per band; ``percentile``:
    per-band stretch of the ``low``..``high`` percentiles of the **whole raster** to 0..1.
    ``stretch`` (``scale`` and ``meanstd``): first stretch those percentiles of the whole raster
    to the range of ``input_dtype``, so that a low-contrast orthophoto reaches the model with the
    contrast it was trained on (training stretches each image the same way). ``max_gain``: that
    stretch widens a band's range by at most this factor (None: no limit), so that a raster of
    one land cover, a forest whose bands span a third of the range, keeps its own look.
    """

    method: str = "scale"
    scale: float = 1.0 / 255.0
    offset: float = 0.0
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    low: float = 2.0
    high: float = 98.0
    stretch: bool = False
    max_gain: float | None = None

    @property
    def per_raster(self) -> bool:
        """Whether each raster's own statistics (its percentiles) shape the model's input."""
        return self.method == "percentile" or self.stretch


@dataclass(frozen=True)
class ModelCard:
    """Everything inference and users need to know about a model."""

    name: str
    classes: tuple[ClassInfo, ...]
    bands: tuple[str, ...]
    normalization: Normalization = field(default_factory=Normalization)
    input_dtype: str = "uint8"
    resolution_m: float | None = None
    tile_size: int = 256
    input_multiple: int = 1  # tile sizes must be multiples of this (2**depth for a U-Net)
    architecture: str = ""
    description: str = ""
    # where the model is known to fail, written by whoever looked at its output on real scenes
    # (measured figures cannot say it); shown beside the description in the plugin's dialogs
    limitations: str = ""
    # the loss's class weights, one per class; inference divides probabilities by them to undo
    # their bias (see inference.undo_class_weights); None: trained without weights
    class_weights: tuple[float, ...] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    schema_version: int = CARD_SCHEMA_VERSION

    @property
    def class_codes(self) -> list[int]:
        """Code of each output channel, in channel order."""
        return [c.code for c in self.classes]

    def to_json(self) -> str:
        """The card as pretty JSON (what ``model.json`` holds)."""
        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "model card") -> ModelCard:
        """Validate and build a card; every problem is a ModelError naming the field."""
        try:
            version = int(data.get("schema_version", 0))
            if version != CARD_SCHEMA_VERSION:
                raise ModelError(
                    f"{source}: schema_version {version} is not supported "
                    f"(this engine reads {CARD_SCHEMA_VERSION})"
                )
            classes = tuple(
                ClassInfo(int(c["code"]), str(c["name"]), str(c["color"])) for c in data["classes"]
            )
            norm = Normalization(
                **{
                    k: tuple(v) if isinstance(v, list) else v
                    for k, v in data.get("normalization", {}).items()
                }
            )
            card = cls(
                name=str(data["name"]),
                classes=classes,
                bands=tuple(str(b) for b in data["bands"]),
                normalization=norm,
                input_dtype=str(data.get("input_dtype", "uint8")),
                resolution_m=None
                if data.get("resolution_m") is None
                else float(data["resolution_m"]),
                tile_size=int(data.get("tile_size", 256)),
                input_multiple=int(data.get("input_multiple", 1)),
                architecture=str(data.get("architecture", "")),
                description=str(data.get("description", "")),
                limitations=str(data.get("limitations", "")),
                class_weights=None
                if data.get("class_weights") is None
                else tuple(float(w) for w in data["class_weights"]),
                training=dict(data.get("training", {})),
                metrics=dict(data.get("metrics", {})),
                schema_version=version,
            )
        except ModelError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{source} is malformed: {type(exc).__name__}: {exc}") from exc
        card.validate(source)
        return card

    def validate(self, source: str = "model card") -> None:
        """Check the values make sense together."""
        codes = self.class_codes
        if not codes:
            raise ModelError(f"{source}: no classes")
        if len(set(codes)) != len(codes) or any(not 0 <= c < IGNORE_CODE for c in codes):
            raise ModelError(f"{source}: class codes must be distinct and in 0..254, got {codes}")
        if not self.bands:
            raise ModelError(f"{source}: no input bands")
        norm = self.normalization
        if norm.method not in NORMALIZATION_METHODS:
            raise ModelError(f"{source}: unknown normalization {norm.method!r}")
        if norm.method == "meanstd" and not (len(norm.mean) == len(norm.std) == len(self.bands)):
            raise ModelError(f"{source}: meanstd needs one mean and one std per band")
        if norm.per_raster and not 0 <= norm.low < norm.high <= 100:
            raise ModelError(f"{source}: a percentile stretch needs 0 <= low < high <= 100")
        if norm.method == "percentile" and norm.stretch:
            raise ModelError(f"{source}: stretch is for scale or meanstd (percentile stretches)")
        if norm.max_gain is not None and not (norm.stretch and norm.max_gain >= 1):
            raise ModelError(f"{source}: max_gain is a stretch's limit, a number >= 1")
        weights = self.class_weights
        if weights is not None and (
            len(weights) != len(codes) or not all(0 < w < float("inf") for w in weights)
        ):
            raise ModelError(f"{source}: class_weights needs one positive number per class")
        if self.tile_size < 16:
            raise ModelError(f"{source}: tile_size {self.tile_size} is too small")
        if self.input_multiple < 1 or self.tile_size % self.input_multiple:
            raise ModelError(
                f"{source}: tile_size {self.tile_size} is not a multiple of {self.input_multiple}"
            )


@dataclass(frozen=True)
class ModelPackage:
    """A model folder on disk; :meth:`load_model` gives the Keras model."""

    path: Path
    card: ModelCard

    @classmethod
    def open(cls, folder: str | os.PathLike[str]) -> ModelPackage:
        """Read the card of the package in ``folder`` (the Keras file is loaded on demand)."""
        path = Path(folder)
        card_path = path / CARD_FILE
        has_model = (path / MODEL_FILE).is_file() or (path / ONNX_FILE).is_file()
        if not has_model or not card_path.is_file():
            raise ModelError(
                f"{path} is not a model package (needs {CARD_FILE} and {MODEL_FILE} or {ONNX_FILE})"
            )
        try:
            data = json.loads(card_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"cannot read {card_path}: {exc}") from exc
        return cls(path, ModelCard.from_dict(data, source=str(card_path)))

    @property
    def runtimes(self) -> tuple[str, ...]:
        """The runtimes this package can run on: ``keras`` (model.keras), ``onnx`` (model.onnx)."""
        found = (("keras", MODEL_FILE), ("onnx", ONNX_FILE))
        return tuple(name for name, file in found if (self.path / file).is_file())

    def runtime(self, requested: str = "auto") -> str:
        """The runtime a run uses: as requested, or ``auto``.

        ``auto``: ONNX Runtime where there is a model.onnx and ONNX Runtime is installed, else
        Keras. On this project's 2-core CPU the two run the bundled model's tiles about equally
        fast, but a segment run under ONNX Runtime starts seconds sooner (no TensorFlow import)
        and peaks at 0.73× the memory (tests/bench/bench_runtimes.py, docs/performance.md).
        """
        if requested not in RUNTIMES:
            raise ModelError(f"unknown runtime {requested!r} (one of {', '.join(RUNTIMES)})")
        if requested != "auto":
            if requested not in self.runtimes:
                file = ONNX_FILE if requested == "onnx" else MODEL_FILE
                raise ModelError(
                    f"model {self.card.name!r} has no {file} for --runtime {requested} "
                    f"(it runs on: {', '.join(self.runtimes)})"
                )
            return requested
        if "onnx" in self.runtimes and (
            "keras" not in self.runtimes or importlib.util.find_spec("onnxruntime")
        ):
            return "onnx"
        return "keras"

    def load_model(self, runtime: str = "keras", device: str = "cpu") -> Any:
        """The model on ``runtime``, checked against the card.

        Keras' (loaded with ``safe_mode=True``) or an :class:`.onnx_model.OnnxModel`.
        """
        if runtime == "onnx":
            from segment_plugin.engine.models.onnx_model import OnnxModel

            model = OnnxModel(self.path / ONNX_FILE, device)
            self._check_shapes(model)
            return model
        if not (self.path / MODEL_FILE).is_file():
            raise ModelError(f"model {self.card.name!r} has no {MODEL_FILE} (it runs on ONNX only)")
        keras = _keras()
        weights = self.path / MODEL_FILE
        if weights.is_file() and not zipfile.is_zipfile(weights):  # Keras says "File not found"
            raise ModelError(
                f"{self.path.name}: {MODEL_FILE} is damaged (not a .keras zip archive, "
                f"{weights.stat().st_size:,} bytes): copy or export the model again"
            )
        try:
            model = keras.saving.load_model(weights, compile=False, safe_mode=True)
        except ValueError as exc:
            text = str(exc)
            if "safe_mode" in text or "lambda" in text.lower():
                raise ModelError(
                    f"{self.path.name}: refused to load, the model contains code (a Lambda layer "
                    "or similar) and models are loaded with safe_mode=True"
                ) from exc
            raise ModelError(f"{self.path.name}: cannot load {MODEL_FILE}: {text}") from exc
        except TypeError as exc:  # unknown custom class: Keras cannot rebuild it
            raise ModelError(
                f"{self.path.name}: the model needs custom code that is not part of this engine "
                f"({exc}); only standard Keras layers can be loaded"
            ) from exc
        except OSError as exc:
            raise ModelError(f"{self.path.name}: cannot read {MODEL_FILE}: {exc}") from exc
        self._check_shapes(model)
        return model

    def _check_shapes(self, model: Any) -> None:
        in_bands = model.inputs[0].shape[-1]
        out_classes = model.outputs[0].shape[-1]
        if in_bands != len(self.card.bands) or out_classes != len(self.card.classes):
            raise ModelError(
                f"{self.path.name}: the model takes {in_bands} bands and gives {out_classes} "
                f"classes, but its card says {len(self.card.bands)} and {len(self.card.classes)}"
            )


def _without_optimizer(model: Any) -> Any:
    """An uncompiled copy of a compiled model (same layers, names and weights).

    A ``.keras`` file of a compiled model also holds the optimizer's state (Adam's two slots:
    two thirds of the file), which nobody loading a package needs: fine-tuning starts a fresh
    optimizer, and training keeps its own state for ``--resume`` in ``.training/``.
    """
    if getattr(model, "optimizer", None) is None:
        return model
    # rebuilt from its architecture alone (clone_model would also revive the compile config,
    # and with it the training loss, which is not a registered Keras object)
    copy = _keras().Model.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


def save_package(model: Any, card: ModelCard, folder: str | os.PathLike[str]) -> ModelPackage:
    """Write ``model.keras`` (weights, no optimizer state) and ``model.json``, each atomically.

    A ``model.onnx`` already in the folder holds the weights it replaces, and ``--runtime auto``
    would run it: it is removed (``export-onnx --into-package`` writes one for these).
    """
    card.validate()
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    partial_model = path / f".{MODEL_FILE}.partial.keras"
    partial_card = path / f".{CARD_FILE}.partial"
    try:
        _without_optimizer(model).save(partial_model)
        partial_card.write_text(card.to_json(), encoding="utf-8")
        (path / ONNX_FILE).unlink(missing_ok=True)
        os.replace(partial_model, path / MODEL_FILE)
        os.replace(partial_card, path / CARD_FILE)
    finally:
        partial_model.unlink(missing_ok=True)
        partial_card.unlink(missing_ok=True)
    return ModelPackage(path, card)


def _keras() -> Any:
    from segment_plugin.engine.info import quiet_tensorflow_logs

    quiet_tensorflow_logs()
    try:
        import keras
    except ImportError as exc:
        raise DependencyError(
            f"Keras is not installed in this engine environment ({exc}): this is the "
            "inference-only engine, which runs ONNX models; Keras models need the full engine "
            f"({FULL_ENGINE_HINT})"
        ) from exc
    return keras


def read_classes_json(path: os.PathLike[str] | str) -> tuple[ClassInfo, ...]:
    """Classes from a ``classes.json`` (``{"classes": [{code, name, colour|color}]}`` or a list)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        entries = data["classes"] if isinstance(data, dict) else data
        classes = tuple(
            ClassInfo(int(c["code"]), str(c["name"]), str(c.get("color") or c.get("colour")))
            for c in entries
            if int(c["code"]) != IGNORE_CODE
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"cannot read classes from {path}: {exc}") from exc
    if not classes:
        raise ModelError(f"{path} lists no classes")
    return classes
