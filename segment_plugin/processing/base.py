"""What every algorithm of the provider shares: its group and how QGIS copies it."""

from __future__ import annotations

from qgis.core import QgsProcessingAlgorithm


class PluginAlgorithm(QgsProcessingAlgorithm):
    """A provider algorithm; subclasses set GROUP and define name, texts and processing."""

    GROUP = ("Segmentation", "segmentation")  # (shown, id)

    def group(self) -> str:  # noqa: D102
        return self.GROUP[0]

    def groupId(self) -> str:  # noqa: D102, N802
        return self.GROUP[1]

    def createInstance(self):  # noqa: D102, N802
        return type(self)()
