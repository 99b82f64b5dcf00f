"""``segment_plugin:export_training_chips`` and ``segment_plugin:fine_tune``."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputFolder,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from segment_plugin.processing.alg_segment_layer import DEVICES, run_or_raise
from segment_plugin.processing.base import PluginAlgorithm
from segment_plugin.processing.raster_input import engine_readable_path
from segment_plugin.processing.vector_input import labels_to_gpkg

PATCHES = ["128", "256", "512"]


class _LabelledRaster(PluginAlgorithm):
    """Shared parameters: image raster, labels (polygons + class field, or a class raster), AOI."""

    GROUP = ("Training", "training")

    def add_label_parameters(self) -> None:
        """INPUT, LABELS + FIELD or LABEL_RASTER, MAPPING, EXTENT."""
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Image raster"))
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                "LABELS", "Label polygons", [QgsProcessing.TypeVectorPolygon], optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterField(
                "FIELD", "Class field", parentLayerParameterName="LABELS", optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterRasterLayer(
                "LABEL_RASTER", "…or a class raster (instead of polygons)", optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterString(
                "MAPPING",
                'Label value → class code (JSON, e.g. {"house": 1, "meadow": "other"}; '
                '"other": none of the classes mapped here; empty: values are codes)',
                optional=True,
            )
        )
        self.addParameter(
            QgsProcessingParameterExtent("EXTENT", "Area of interest (default: all)", optional=True)
        )

    def engine_label_args(self, parameters, context, feedback, temporary: list) -> list[str]:
        """Engine arguments for the image and its labels.

        Files exported for the engine are appended to ``temporary`` as they are made, so the
        caller's ``finally`` deletes them whatever fails.
        """
        layer = self.parameterAsRasterLayer(parameters, "INPUT", context)
        extent = None
        if parameters.get("EXTENT"):
            extent = self.parameterAsExtent(parameters, "EXTENT", context, layer.crs())
        label_raster = self.parameterAsRasterLayer(parameters, "LABEL_RASTER", context)
        has_polygons = bool(parameters.get("LABELS"))
        if has_polygons == (label_raster is not None):
            raise QgsProcessingException("give label polygons (LABELS) or a class raster, not both")
        field = self.parameterAsString(parameters, "FIELD", context)
        if has_polygons and not field:
            raise QgsProcessingException("choose the field that holds the class (FIELD)")
        mapping = self.parameterAsString(parameters, "MAPPING", context).strip()
        if mapping:
            try:
                json.loads(mapping)
            except ValueError as exc:
                raise QgsProcessingException(f"MAPPING is not JSON: {exc}") from exc
        raster, temp = engine_readable_path(layer, extent, feedback)
        temporary.append(temp)
        if has_polygons:
            labels = labels_to_gpkg(self.parameterAsSource(parameters, "LABELS", context))
            temporary.append(labels)
            args = ["--labels", str(labels), "--field", field]
        else:
            labels, temp = engine_readable_path(label_raster, None, feedback)
            temporary.append(temp)
            args = ["--labels", str(labels)]
        return [str(raster), *args, *(["--mapping", mapping] if mapping else [])]


def _classes_file(text: str) -> Path:
    """The CLASSES JSON written where the engine's --classes can read it."""
    try:
        json.loads(text)
    except ValueError as exc:
        raise QgsProcessingException(f"CLASSES is not JSON: {exc}") from exc
    handle, path = tempfile.mkstemp(prefix="segment_classes_", suffix=".json")
    with open(handle, "w", encoding="utf-8") as stream:
        stream.write(text)
    return Path(path)


def _delete(paths) -> None:
    for path in paths:
        if path is not None:
            Path(path).unlink(missing_ok=True)


class ExportTrainingChipsAlgorithm(_LabelledRaster):
    """Georeferenced image/mask chips where label polygons are."""

    def name(self) -> str:  # noqa: D102
        return "export_training_chips"

    def displayName(self) -> str:  # noqa: D102, N802
        return "Export training chips"

    def shortHelpString(self) -> str:  # noqa: D102, N802
        return (
            "Rasterises label polygons (their class field, optionally mapped to class codes) on "
            "the image's grid and writes georeferenced GeoTIFF pairs chip_R_C.tif + "
            "chip_R_C_mask.tif for every patch that holds labels; unlabelled pixels are 255 "
            "(ignore), so sparse digitising works. The folder is what `segment-plugin train "
            "--images` reads."
        )

    def initAlgorithm(self, config=None) -> None:  # noqa: D102, N802
        self.add_label_parameters()
        self.addParameter(
            QgsProcessingParameterEnum("PATCH", "Chip size (px)", PATCHES, defaultValue=1)
        )
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT", "Chips folder"))

    def processAlgorithm(self, parameters, context, feedback) -> dict:  # noqa: D102, N802
        output = self.parameterAsString(parameters, "OUTPUT", context)
        patch = PATCHES[self.parameterAsEnum(parameters, "PATCH", context)]
        temporary: list = []
        try:
            args = self.engine_label_args(parameters, context, feedback, temporary)
            result = run_or_raise(
                ["export-chips", *args, "--output", output, "--patch", patch], feedback
            )
        finally:
            _delete(temporary)
        feedback.pushInfo(f"{result['chips']} chip pairs")
        return {"OUTPUT": output}


class FineTuneAlgorithm(_LabelledRaster):
    """Fine-tune a model on digitised polygons; the new model joins the user's models."""

    def name(self) -> str:  # noqa: D102
        return "fine_tune"

    def displayName(self) -> str:  # noqa: D102, N802
        return "Fine-tune a model"

    def shortHelpString(self) -> str:  # noqa: D102, N802
        return (
            "Fine-tunes BASE_MODEL on the image and the label polygons (pixels outside the "
            "polygons are ignored). A share of the labelled area (VAL_FRACTION, split by area, "
            "not by random pixels) is held out: the base model and the fine-tuned one are "
            "measured on it (mIoU before/after, per class in REPORT). The new model is saved "
            "under NAME in your models folder (the bundled model is never overwritten) and "
            "appears in the Segment Layer dialog."
        )

    def initAlgorithm(self, config=None) -> None:  # noqa: D102, N802
        self.add_label_parameters()
        self.addParameter(QgsProcessingParameterString("BASE_MODEL", "Base model", "landcover"))
        self.addParameter(QgsProcessingParameterString("NAME", "New model name"))
        self.addParameter(
            QgsProcessingParameterNumber("EPOCHS", "Epochs", defaultValue=10, minValue=1)
        )
        self.addParameter(
            QgsProcessingParameterEnum("PATCH", "Patch size (px)", PATCHES, defaultValue=1)
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                "LEARNING_RATE",
                "Learning rate",
                QgsProcessingParameterNumber.Double,
                1e-4,
                minValue=1e-7,
            )
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                "VAL_FRACTION",
                "Validation share of the labelled area",
                QgsProcessingParameterNumber.Double,
                0.2,
                minValue=0.05,
                maxValue=0.5,
            )
        )
        # trained by default, as the CLI: frozen, a fine-tune on DeepGlobe forest reached
        # woodland IoU 0.16 in 6 epochs, trained 0.74; on Chesapeake strips it gained nothing
        self.addParameter(
            QgsProcessingParameterBoolean("FREEZE_ENCODER", "Freeze the encoder", False)
        )
        self.addParameter(QgsProcessingParameterBoolean("AUGMENT", "Augmentation", True))
        advanced = (
            QgsProcessingParameterBoolean(
                "TRAIN_BATCHNORM",
                "Update the base's batch-normalisation statistics (plenty of labels only)",
                False,
            ),
            QgsProcessingParameterNumber(
                "DISTILL",
                "Partial labels: weight of keeping the base model's odds among the classes an "
                "'other' pixel may be (0: off)",
                QgsProcessingParameterNumber.Double,
                1.0,
                minValue=0.0,
            ),
        )
        for parameter in advanced:
            parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(parameter)
        self.addParameter(QgsProcessingParameterEnum("DEVICE", "Device", DEVICES, defaultValue=0))
        self.addParameter(
            QgsProcessingParameterString(
                "CLASSES",
                "Classes of the new model, when they differ from the base model's (JSON list of "
                '{"code", "name", "color"}; its head is then re-initialised)',
                optional=True,
            )
        )
        self.addOutput(QgsProcessingOutputFolder("MODEL", "New model folder"))
        self.addOutput(
            QgsProcessingOutputNumber("MIOU_BEFORE", "Validation mIoU of the base model")
        )
        self.addOutput(QgsProcessingOutputNumber("MIOU_AFTER", "Validation mIoU after fine-tuning"))
        self.addOutput(QgsProcessingOutputString("REPORT", "Report (JSON)"))

    def processAlgorithm(self, parameters, context, feedback) -> dict:  # noqa: D102, N802
        name = self.parameterAsString(parameters, "NAME", context).strip()
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            raise QgsProcessingException(
                f"the model name {name!r} may use letters, digits, _ . - only"
            )
        installed = run_or_raise(["models"], feedback)
        user_dir = installed["user_dir"]
        output = f"{user_dir}/{name}"
        names = {m["card"]["name"] for m in installed.get("models", []) if "card" in m}
        if Path(output).exists() or name in names:  # a bundled model is never shadowed either
            raise QgsProcessingException(f"a model named {name!r} exists: choose another name")
        classes = self.parameterAsString(parameters, "CLASSES", context).strip()
        temporary: list = []
        try:
            args = [
                "train",
                "--raster",
                *self.engine_label_args(parameters, context, feedback, temporary),
                "--output",
                output,
                "--name",
                name,
                "--base-model",
                self.parameterAsString(parameters, "BASE_MODEL", context),
                "--epochs",
                str(self.parameterAsInt(parameters, "EPOCHS", context)),
                "--patch",
                PATCHES[self.parameterAsEnum(parameters, "PATCH", context)],
                "--learning-rate",
                str(self.parameterAsDouble(parameters, "LEARNING_RATE", context)),
                "--val-fraction",
                str(self.parameterAsDouble(parameters, "VAL_FRACTION", context)),
                "--device",
                DEVICES[self.parameterAsEnum(parameters, "DEVICE", context)],
            ]
            if classes:
                classes_path = _classes_file(classes)
                temporary.append(classes_path)
                args += ["--classes", str(classes_path)]
            if self.parameterAsBoolean(parameters, "FREEZE_ENCODER", context):
                args.append("--freeze-encoder")
            if not self.parameterAsBoolean(parameters, "AUGMENT", context):
                args.append("--no-augment")
            if self.parameterAsBoolean(parameters, "TRAIN_BATCHNORM", context):
                args.append("--train-batchnorm")
            args += ["--distill", str(self.parameterAsDouble(parameters, "DISTILL", context))]
            result = run_or_raise(args, feedback)
        finally:
            _delete(temporary)
        before = (result.get("base_val_report") or {}).get("miou")
        after = result.get("val_miou")
        feedback.pushInfo(f"validation mIoU: base model {before}, fine-tuned {after}")
        if result.get("handed_back"):
            feedback.pushWarning(result["handed_back"])
        return {
            "MODEL": output,
            "MIOU_BEFORE": before,
            "MIOU_AFTER": after,
            "REPORT": json.dumps(result),
        }
