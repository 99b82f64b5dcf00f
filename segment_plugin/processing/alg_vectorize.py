"""``segment_plugin:vectorize``: class raster → one polygon per class region."""

from __future__ import annotations

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
)

from segment_plugin.gui.styling import result_layer_names
from segment_plugin.processing.alg_segment_layer import run_or_raise, vectorize_args
from segment_plugin.processing.base import PluginAlgorithm
from segment_plugin.processing.dask_parameters import add_dask_parameters, dask_args
from segment_plugin.processing.raster_input import is_plain_file
from segment_plugin.processing.result_styles import style_on_load


class VectorizeAlgorithm(PluginAlgorithm):
    """Polygons along pixel edges, streamed by strips, in the engine process."""

    def name(self) -> str:  # noqa: D102
        return "vectorize"

    def displayName(self) -> str:  # noqa: D102, N802
        return "Vectorize class raster"

    def shortHelpString(self) -> str:  # noqa: D102, N802
        return (
            "Turns a class raster (one band of integer class codes, e.g. the output of Segment "
            "layer) into polygons along pixel edges: one feature per connected region with "
            "class_id, class, area_m2 and perim_m. Neighbouring classes share their boundaries "
            "exactly; nodata gives no polygons. CLASSES keeps only some ids (e.g. 1,2). MIN_AREA "
            "(m²) merges smaller regions into their largest neighbour first; SMOOTH applies a "
            "3×3 majority filter first; SIMPLIFY (m) simplifies while keeping shared boundaries. "
            "Output: shapefile (.shp) or GeoPackage (.gpkg). Advanced: SCHEDULER runs ranges of "
            "rows on a Dask cluster (not with SIMPLIFY, which needs the whole coverage at once)."
        )

    def initAlgorithm(self, config=None) -> None:  # noqa: D102, N802
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Class raster"))
        self.addParameter(
            QgsProcessingParameterString(
                "CLASSES", "Class ids (e.g. 1,2; empty: all)", optional=True
            )
        )
        for name, label in (
            ("MIN_AREA", "Minimum polygon area (m²)"),
            ("SIMPLIFY", "Simplify (m)"),
        ):
            self.addParameter(
                QgsProcessingParameterNumber(
                    name, label, QgsProcessingParameterNumber.Double, 0.0, minValue=0.0
                )
            )
        self.addParameter(QgsProcessingParameterBoolean("SMOOTH", "Majority smoothing", False))
        add_dask_parameters(self)
        self.addParameter(
            QgsProcessingParameterVectorDestination(
                "OUTPUT", "Class polygons", QgsProcessing.TypeVectorPolygon
            )
        )

    def processAlgorithm(self, parameters, context, feedback) -> dict:  # noqa: D102, N802
        layer = self.parameterAsRasterLayer(parameters, "INPUT", context)
        if layer is None or not is_plain_file(layer):
            raise QgsProcessingException("the class raster must be a raster file")
        output = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        args = ["vectorize", layer.source(), "--output", output, "--overwrite"]
        classes = self.parameterAsString(parameters, "CLASSES", context).strip()
        if classes:
            args += ["--classes", classes]
        args += vectorize_args(
            self.parameterAsDouble(parameters, "MIN_AREA", context),
            self.parameterAsDouble(parameters, "SIMPLIFY", context),
        )
        if self.parameterAsBoolean(parameters, "SMOOTH", context):
            args.append("--smooth")
        args += dask_args(self, parameters, context)
        result = run_or_raise(args, feedback)
        feedback.pushInfo(f"{result.get('features', 0)} polygons")
        _, polygons_name = result_layer_names(layer.name(), None)
        style_on_load(context, output, layer.source(), polygons_name)
        return {"OUTPUT": output}
