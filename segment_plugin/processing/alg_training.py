"""``segment_plugin:export_training_chips`` and ``segment_plugin:fine_tune``."""

from __future__ import annotations

import json
import re

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputFolder,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from segment_plugin.processing.alg_segment_layer import run_or_raise
from segment_plugin.processing.base import PluginAlgorithm
from segment_plugin.processing.raster_input import engine_readable_path
from segment_plugin.processing.vector_input import labels_to_gpkg

PATCHES = ["128", "256", "512"]


class _LabelledRaster(PluginAlgorithm):
    """Shared parameters: image raster, label polygons, class field, value → code mapping."""

    GROUP = ("Training", "training")

    def add_label_parameters(self) -> None:
        """INPUT, LABELS, FIELD, MAPPING."""
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Image raster"))
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                "LABELS", "Label polygons", [QgsProcessing.TypeVectorPolygon]
            )
        )
        self.addParameter(
            QgsProcessingParameterField("FIELD", "Class field", parentLayerParameterName="LABELS")
        )
        self.addParameter(
            QgsProcessingParameterString(
                "MAPPING",
                'Field value → class code (JSON, e.g. {"house": 1}; empty: values are codes)',
                optional=True,
            )
        )

    def engine_label_args(self, parameters, context, feedback) -> tuple[list[str], list]:
        """Engine flags for the labels, and temporary files to delete afterwards."""
        layer = self.parameterAsRasterLayer(parameters, "INPUT", context)
        raster, temporary_raster = engine_readable_path(layer, None, feedback)
        labels = labels_to_gpkg(self.parameterAsSource(parameters, "LABELS", context))
        args = [
            "--labels",
            str(labels),
            "--field",
            self.parameterAsString(parameters, "FIELD", context),
        ]
        mapping = self.parameterAsString(parameters, "MAPPING", context).strip()
        if mapping:
            try:
                json.loads(mapping)
            except ValueError as exc:
                raise QgsProcessingException(f"MAPPING is not JSON: {exc}") from exc
            args += ["--mapping", mapping]
        return [str(raster), *args], [p for p in (temporary_raster, labels) if p is not None]


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
        args, temporary = self.engine_label_args(parameters, context, feedback)
        output = self.parameterAsString(parameters, "OUTPUT", context)
        patch = PATCHES[self.parameterAsEnum(parameters, "PATCH", context)]
        try:
            result = run_or_raise(
                ["export-chips", *args, "--output", output, "--patch", patch], feedback
            )
        finally:
            for path in temporary:
                path.unlink(missing_ok=True)
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
        self.addParameter(
            QgsProcessingParameterBoolean("FREEZE_ENCODER", "Freeze the encoder", True)
        )
        self.addParameter(QgsProcessingParameterBoolean("AUGMENT", "Augmentation", True))
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
        user_dir = run_or_raise(["models"], feedback)["user_dir"]
        output = f"{user_dir}/{name}"
        args, temporary = self.engine_label_args(parameters, context, feedback)
        args = [
            "train",
            "--raster",
            *args,
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
        ]
        if self.parameterAsBoolean(parameters, "FREEZE_ENCODER", context):
            args.append("--freeze-encoder")
        if not self.parameterAsBoolean(parameters, "AUGMENT", context):
            args.append("--no-augment")
        try:
            result = run_or_raise(args, feedback)
        finally:
            for path in temporary:
                path.unlink(missing_ok=True)
        before = (result.get("base_val_report") or {}).get("miou")
        after = result.get("val_miou")
        feedback.pushInfo(f"validation mIoU: base model {before}, fine-tuned {after}")
        return {
            "MODEL": output,
            "MIOU_BEFORE": before,
            "MIOU_AFTER": after,
            "REPORT": json.dumps(result),
        }
