"""ONNX in Processing: export a model for Deepness and other tools, add an ONNX model to ours."""

from __future__ import annotations

from qgis.core import (
    QgsProcessingException,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from segment_plugin.processing.alg_segment_layer import run_or_raise
from segment_plugin.processing.base import PluginAlgorithm
from segment_plugin.processing.raster_input import is_plain_file


class ExportOnnxAlgorithm(PluginAlgorithm):
    """``segment_plugin:export_onnx``: a model package as one ONNX file (needs the full engine)."""

    def name(self) -> str:  # noqa: D102
        return "export_onnx"

    def displayName(self) -> str:  # noqa: D102, N802
        return "Export model to ONNX (Deepness)"

    def shortHelpString(self) -> str:  # noqa: D102, N802
        return (
            "Writes a model (bundled 'landcover', a user model name, or a model folder) as one "
            "ONNX file that the Deepness plugin, ONNX Runtime and other tools run: NCHW input "
            "scaled as Deepness scales it, class probabilities out, the class names, resolution, "
            "tile size and overlap in Deepness' metadata and the full model card beside them. "
            "A model that stretches each raster's contrast (the bundled 'landcover') needs a "
            "raster whose stretch is written into Deepness' keys: Deepness then treats every "
            "raster as that one. Needs the full engine (TensorFlow)."
        )

    def initAlgorithm(self, config=None) -> None:  # noqa: D102, N802
        self.addParameter(QgsProcessingParameterString("MODEL", "Model", defaultValue="landcover"))
        self.addParameter(
            QgsProcessingParameterBoolean("DEEPNESS", "With Deepness' metadata keys", True)
        )
        self.addParameter(
            QgsProcessingParameterRasterLayer(
                "STRETCH_OF", "Raster whose contrast stretch Deepness gets", optional=True
            )
        )
        self.addParameter(
            QgsProcessingParameterFileDestination("OUTPUT", "ONNX file", "ONNX models (*.onnx)")
        )

    def processAlgorithm(self, parameters, context, feedback) -> dict:  # noqa: D102, N802
        output = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        model = self.parameterAsString(parameters, "MODEL", context)
        args = ["export-onnx", model, "--output", output, "--overwrite"]
        if not self.parameterAsBoolean(parameters, "DEEPNESS", context):
            args.append("--no-deepness")
        raster = self.parameterAsRasterLayer(parameters, "STRETCH_OF", context)
        if raster is not None:
            if not is_plain_file(raster):
                raise QgsProcessingException(
                    f"{raster.name()}: the contrast stretch is read from a raster file; save "
                    "the layer to a GeoTIFF first"
                )
            args += ["--stretch-of", raster.source().split("|")[0]]
        result = run_or_raise(args, feedback)
        feedback.pushInfo(f"wrote {output} ({result.get('bytes', 0) / 1e6:.1f} MB)")
        return {"OUTPUT": output}


class AddOnnxModelAlgorithm(PluginAlgorithm):
    """``segment_plugin:add_onnx_model``: a Deepness (or exported) ONNX file as a user model."""

    def name(self) -> str:  # noqa: D102
        return "add_onnx_model"

    def displayName(self) -> str:  # noqa: D102, N802
        return "Add ONNX model (Deepness format)"

    def shortHelpString(self) -> str:  # noqa: D102, N802
        return (
            "Adds an ONNX segmentation model to your models folder so that Segment layer can "
            "use it by name: a Deepness model (its class names, resolution, tile size and "
            "standardisation are read from its metadata) or one exported by this plugin. Models "
            "that are not segmentation models (Deepness' detectors, regressors) are refused. "
            "Runs with ONNX Runtime, in the full or the inference-only engine."
        )

    def initAlgorithm(self, config=None) -> None:  # noqa: D102, N802
        self.addParameter(QgsProcessingParameterFile("INPUT", "ONNX model", extension="onnx"))
        self.addParameter(
            QgsProcessingParameterString("NAME", "Name (empty: the file's)", optional=True)
        )
        self.addParameter(QgsProcessingParameterBoolean("OVERWRITE", "Replace a model so named"))
        self.addOutput(QgsProcessingOutputString("MODEL", "Model name"))

    def processAlgorithm(self, parameters, context, feedback) -> dict:  # noqa: D102, N802
        args = ["models", "--add", self.parameterAsFile(parameters, "INPUT", context)]
        name = self.parameterAsString(parameters, "NAME", context).strip()
        if name:
            args += ["--name", name]
        if self.parameterAsBoolean(parameters, "OVERWRITE", context):
            args.append("--overwrite")
        result = run_or_raise(args, feedback)
        card = result.get("card") or {}
        feedback.pushInfo(f"added {card.get('name')!r}: {card.get('description', '')}")
        return {"MODEL": card.get("name", "")}
