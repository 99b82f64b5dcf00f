"""What every algorithm of the provider shares: its group, how QGIS copies it, input checks."""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsProcessingAlgorithm, QgsProcessingParameterRasterLayer


class PluginAlgorithm(QgsProcessingAlgorithm):
    """A provider algorithm; subclasses set GROUP and define name, texts and processing."""

    GROUP = ("Segmentation", "segmentation")  # (shown, id)

    def group(self) -> str:  # noqa: D102
        return self.GROUP[0]

    def groupId(self) -> str:  # noqa: D102, N802
        return self.GROUP[1]

    def createInstance(self):  # noqa: D102, N802
        return type(self)()

    def checkParameterValues(self, parameters, context):  # noqa: D102, N802
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:  # QGIS says "… not found" of a file it found but cannot read as a raster
            for definition in self.parameterDefinitions():
                value = parameters.get(definition.name())
                if (
                    isinstance(definition, QgsProcessingParameterRasterLayer)
                    and isinstance(value, str)
                    and Path(value).is_file()
                    and definition.name() in message
                ):
                    return False, (
                        f"{definition.name()}: {value} exists but is not a raster QGIS can read "
                        "(not an image, or damaged)"
                    )
        return ok, message
