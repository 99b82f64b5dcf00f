"""Style and name result layers on every Processing path (toolbox, batch, modeler, runAndLoad).

Processing loads an algorithm's outputs itself, after the algorithm returns, without the .qml
beside them; a post-processor attached to each output is the hook it offers.
"""

from __future__ import annotations

from qgis.core import QgsProcessingLayerPostProcessorInterface, QgsRasterLayer, QgsVectorLayer

from segment_plugin.gui.styling import raster_classes, style_class_polygons, style_class_raster

#: Post-processors must outlive the algorithm (QGIS calls them after it returns).
_POST_PROCESSORS: list = []


class StyleResultLayer(QgsProcessingLayerPostProcessorInterface):
    """When QGIS loads a result: class raster styled from its .qml, polygons in its colours."""

    def __init__(self, classes_path: str, name: str) -> None:
        super().__init__()
        self.classes_path = classes_path
        self.name = name

    def postProcessLayer(self, layer, context, feedback) -> None:  # noqa: N802 - QGIS API
        """Runs in the main thread once the layer is in the project."""
        if isinstance(layer, QgsRasterLayer):
            style_class_raster(layer)
        elif isinstance(layer, QgsVectorLayer):
            classes = QgsRasterLayer(self.classes_path, "classes")  # picks up its .qml
            style_class_polygons(layer, raster_classes(classes))
        layer.setName(self.name)
        if self in _POST_PROCESSORS:  # done: QGIS will not call it again
            _POST_PROCESSORS.remove(self)


def style_on_load(context, output: str, classes_path: str, name: str) -> None:
    """Style ``output`` (raster or polygons of ``classes_path``) if Processing will load it."""
    if context.willLoadLayerOnCompletion(output):
        styler = StyleResultLayer(classes_path, name)
        _POST_PROCESSORS.append(styler)
        context.layerToLoadOnCompletionDetails(output).setPostProcessor(styler)
