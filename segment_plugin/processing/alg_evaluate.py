"""``segment_plugin:evaluate``: class raster vs reference → mIoU, per-class IoU, HTML report."""

from __future__ import annotations

import json

from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterRasterLayer,
)

from segment_plugin.processing.alg_segment_layer import run_or_raise
from segment_plugin.processing.base import PluginAlgorithm
from segment_plugin.processing.raster_input import is_plain_file


class EvaluateAlgorithm(PluginAlgorithm):
    """Accuracy of a class raster against reference labels on the same grid."""

    def name(self) -> str:  # noqa: D102
        return "evaluate"

    def displayName(self) -> str:  # noqa: D102, N802
        return "Evaluate classes against a reference"

    def shortHelpString(self) -> str:  # noqa: D102, N802
        return (
            "Compares a class raster (e.g. the output of Segment layer) with a reference class "
            "raster on the same grid, pixel by pixel. Reference pixels of 255 (ignore) and "
            "prediction nodata are left out. Reports mIoU, per-class IoU and Dice, pixel "
            "accuracy and the confusion matrix; REPORT_HTML adds a page with the confusion "
            "matrix drawn."
        )

    def initAlgorithm(self, config=None) -> None:  # noqa: D102, N802
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Class raster"))
        self.addParameter(QgsProcessingParameterRasterLayer("REFERENCE", "Reference classes"))
        self.addParameter(
            QgsProcessingParameterFileDestination(
                "REPORT_HTML",
                "Report",
                "HTML files (*.html)",
                optional=True,
                createByDefault=False,
            )
        )
        self.addOutput(QgsProcessingOutputNumber("MIOU", "mIoU"))
        self.addOutput(QgsProcessingOutputNumber("PIXEL_ACCURACY", "Pixel accuracy"))
        self.addOutput(QgsProcessingOutputString("REPORT", "Report (JSON)"))

    def processAlgorithm(self, parameters, context, feedback) -> dict:  # noqa: D102, N802
        layers = [
            self.parameterAsRasterLayer(parameters, n, context) for n in ("INPUT", "REFERENCE")
        ]
        if any(layer is None or not is_plain_file(layer) for layer in layers):
            raise QgsProcessingException("both rasters must be raster files")
        args = ["evaluate", "--prediction", layers[0].source(), "--reference", layers[1].source()]
        report_path = self.parameterAsFileOutput(parameters, "REPORT_HTML", context)
        if report_path:
            args += ["--report", report_path, "--overwrite"]
        report = run_or_raise(args, feedback)
        feedback.pushInfo(f"mIoU {report['miou']}, pixel accuracy {report['pixel_accuracy']}")
        for name, iou in report["per_class_iou"].items():
            feedback.pushInfo(f"  {name}: IoU {iou}")
        results = {
            "MIOU": report["miou"],
            "PIXEL_ACCURACY": report["pixel_accuracy"],
            "REPORT": json.dumps(report),
        }
        if report_path:
            results["REPORT_HTML"] = report_path
        return results
