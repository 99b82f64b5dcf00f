"""``segment_plugin:segment_layer``: raster layer → styled class raster (+ class polygons)."""

from __future__ import annotations

import json

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
)

from segment_plugin.area_summary import area_summary
from segment_plugin.gui.styling import result_layer_names
from segment_plugin.processing.base import PluginAlgorithm
from segment_plugin.processing.dask_parameters import add_dask_parameters, dask_args
from segment_plugin.processing.engine_feedback import run_engine_with_feedback
from segment_plugin.processing.raster_input import engine_readable_path
from segment_plugin.processing.result_styles import style_on_load

DEVICES = ["auto", "cpu", "gpu"]
RUNTIMES = ["auto", "keras", "onnx"]


def vectorize_args(min_area: float, simplify: float) -> list[str]:
    """Engine flags for the optional polygon cleaning (0 = off)."""
    args = []
    if min_area > 0:
        args += ["--min-area", str(min_area)]
    if simplify > 0:
        args += ["--simplify", str(simplify)]
    return args


def run_or_raise(args: list[str], feedback) -> dict:
    """Run an engine command; its error becomes one QgsProcessingException."""
    outcome = run_engine_with_feedback(args, feedback)
    if outcome.status == "cancelled" or feedback.isCanceled():
        raise QgsProcessingException("cancelled")
    if not outcome.ok:
        raise QgsProcessingException(outcome.message)
    return outcome.data


class SegmentLayerAlgorithm(PluginAlgorithm):
    """Tiled land-cover segmentation in the engine process."""

    def name(self) -> str:  # noqa: D102
        return "segment_layer"

    def displayName(self) -> str:  # noqa: D102, N802
        return "Segment layer"

    def shortHelpString(self) -> str:  # noqa: D102, N802
        return (
            "Segments a raster layer into land-cover classes with a deep-learning model (bundled "
            "'landcover' model, a user model name, or a model folder). The engine runs in its own "
            "Python environment: tiles are blended so there are no seams, memory stays bounded "
            "on rasters of any size, and the class raster is written on the input's grid with "
            "class names and colours (a .qml style beside it).\n\n"
            "BANDS: input bands for the model, e.g. 3,2,1 (empty: from the model card / the "
            "file's colour interpretation). EXTENT: only this part (exported first). Layers that "
            "are not plain raster files (WMS, XYZ, memory) are exported to a temporary GeoTIFF "
            "first. TILE_SIZE / OVERLAP: 0 = the model's defaults. OUTPUT_VECTOR: also write one "
            "polygon per class region (shapefile or GeoPackage), with MIN_AREA (m², minimum "
            "mapping unit) and SIMPLIFY (m, topology-preserving)."
        )

    def initAlgorithm(self, config=None) -> None:  # noqa: D102, N802
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Raster layer"))
        self.addParameter(QgsProcessingParameterString("MODEL", "Model", defaultValue="landcover"))
        self.addParameter(
            QgsProcessingParameterString("BANDS", "Bands (e.g. 3,2,1)", optional=True)
        )
        self.addParameter(QgsProcessingParameterExtent("EXTENT", "Extent", optional=True))
        for name, label, default in (
            ("TILE_SIZE", "Tile size (px, 0 = model's)", 0),
            ("OVERLAP", "Tile overlap (px, 0 = 3/8 of the tile)", 0),
        ):
            self.addParameter(
                QgsProcessingParameterNumber(name, label, defaultValue=default, minValue=0)
            )
        self.addParameter(
            QgsProcessingParameterEnum("DEVICE", "Device", options=DEVICES, defaultValue=0)
        )
        self.addParameter(
            QgsProcessingParameterEnum(
                "RUNTIME",
                "Runtime (auto: ONNX Runtime where the model has model.onnx)",
                options=RUNTIMES,
                defaultValue=0,
            )
        )
        add_dask_parameters(self)
        self.addParameter(QgsProcessingParameterBoolean("TTA", "Test-time augmentation", False))
        self.addParameter(
            QgsProcessingParameterBoolean(
                "KEEP_CLASS_WEIGHTS",
                "Keep the training's class weights (more of the rarer classes: trees, roads)",
                False,
            )
        )
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "Classes"))
        self.addParameter(
            QgsProcessingParameterVectorDestination(
                "OUTPUT_VECTOR",
                "Class polygons",
                QgsProcessing.TypeVectorPolygon,
                optional=True,
                createByDefault=False,
            )
        )
        for name, label in (
            ("MIN_AREA", "Minimum polygon area (m²)"),
            ("SIMPLIFY", "Simplify polygons (m)"),
        ):
            self.addParameter(
                QgsProcessingParameterNumber(
                    name, label, QgsProcessingParameterNumber.Double, 0.0, minValue=0.0
                )
            )
        self.addOutput(QgsProcessingOutputString("SUMMARY", "Summary (JSON: classes, areas)"))

    def processAlgorithm(self, parameters, context, feedback) -> dict:  # noqa: D102, N802
        layer = self.parameterAsRasterLayer(parameters, "INPUT", context)
        if layer is None:
            raise QgsProcessingException("no raster layer given")
        extent = None
        if parameters.get("EXTENT"):
            extent = self.parameterAsExtent(parameters, "EXTENT", context, layer.crs())
        source, temporary = engine_readable_path(layer, extent, feedback)
        output = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        vector = self.parameterAsOutputLayer(parameters, "OUTPUT_VECTOR", context)
        args = ["segment", str(source), "--output", output, "--overwrite"]
        args += ["--model", self.parameterAsString(parameters, "MODEL", context)]
        bands = self.parameterAsString(parameters, "BANDS", context).strip()
        if bands:
            args += ["--bands", bands]
        for name, flag in (("TILE_SIZE", "--tile"), ("OVERLAP", "--overlap")):
            value = self.parameterAsInt(parameters, name, context)
            if value > 0:
                args += [flag, str(value)]
        args += ["--device", DEVICES[self.parameterAsEnum(parameters, "DEVICE", context)]]
        args += ["--runtime", RUNTIMES[self.parameterAsEnum(parameters, "RUNTIME", context)]]
        args += dask_args(self, parameters, context)
        if self.parameterAsBoolean(parameters, "TTA", context):
            args.append("--tta")
        if self.parameterAsBoolean(parameters, "KEEP_CLASS_WEIGHTS", context):
            args.append("--keep-class-weights")
        try:
            result = run_or_raise(args, feedback)
        finally:
            if temporary is not None:
                temporary.unlink(missing_ok=True)
        for name, hectares, percent in area_summary(result.get("class_area_m2") or {}):
            feedback.pushInfo(f"{name:<14} {hectares:12.2f} ha {percent:6.1f} %")
        summary = {
            "model": result.get("model"),
            "device": result.get("device"),
            "class_pixels": result.get("class_pixels"),
            "class_area_m2": result.get("class_area_m2"),
        }
        outputs = {"OUTPUT": output, "SUMMARY": json.dumps(summary)}
        raster_name, polygons_name = result_layer_names(layer.name(), result.get("model"))
        style_on_load(context, output, output, raster_name)
        if vector:
            min_area = self.parameterAsDouble(parameters, "MIN_AREA", context)
            simplify = self.parameterAsDouble(parameters, "SIMPLIFY", context)
            run_or_raise(
                [
                    "vectorize",
                    output,
                    "--output",
                    vector,
                    "--overwrite",
                    *vectorize_args(min_area, simplify),
                ],
                feedback,
            )
            outputs["OUTPUT_VECTOR"] = vector
            style_on_load(context, vector, output, polygons_name)
        return outputs
