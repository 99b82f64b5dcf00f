"""The Processing provider: id ``segment_plugin``, one place that lists the algorithms."""

from __future__ import annotations

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from segment_plugin.plugin_files import resource_path, version
from segment_plugin.processing.alg_engine_status import EngineStatusAlgorithm
from segment_plugin.processing.alg_evaluate import EvaluateAlgorithm
from segment_plugin.processing.alg_onnx import AddOnnxModelAlgorithm, ExportOnnxAlgorithm
from segment_plugin.processing.alg_segment_layer import SegmentLayerAlgorithm
from segment_plugin.processing.alg_training import ExportTrainingChipsAlgorithm, FineTuneAlgorithm
from segment_plugin.processing.alg_vectorize import VectorizeAlgorithm

PROVIDER_ID = "segment_plugin"


class SegmentProvider(QgsProcessingProvider):
    """Land-cover segmentation algorithms; each runs the engine in its own process."""

    def id(self) -> str:  # noqa: D102
        return PROVIDER_ID

    def name(self) -> str:  # noqa: D102
        return "Segment Plugin"

    def longName(self) -> str:  # noqa: D102, N802
        return f"Segment Plugin {version()} (land-cover segmentation)"

    def icon(self) -> QIcon:  # noqa: D102
        return QIcon(str(resource_path("icons", "segment.svg")))

    def loadAlgorithms(self) -> None:  # noqa: D102, N802
        algorithms = (
            EngineStatusAlgorithm(),
            SegmentLayerAlgorithm(),
            VectorizeAlgorithm(),
            EvaluateAlgorithm(),
            ExportTrainingChipsAlgorithm(),
            FineTuneAlgorithm(),
            ExportOnnxAlgorithm(),
            AddOnnxModelAlgorithm(),
        )
        for algorithm in algorithms:
            self.addAlgorithm(algorithm)
