"""Label polygons for the engine: any QGIS vector source written to a temporary GeoPackage.

The engine reads files only; this also honours "selected features only" and memory layers.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from qgis.core import (
    QgsFeatureRequest,
    QgsProcessingException,
    QgsProject,
    QgsVectorFileWriter,
)


def labels_to_gpkg(source, name: str = "labels") -> Path:
    """Write a QgsFeatureSource to a temporary .gpkg (the caller deletes it)."""
    if source is None or source.featureCount() == 0:
        raise QgsProcessingException(
            "the label layer has no features ('selected features only' with nothing selected?)"
        )
    handle, path = tempfile.mkstemp(prefix=f"segment_{name}_", suffix=".gpkg")
    os.close(handle)
    os.unlink(path)
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    writer = QgsVectorFileWriter.create(
        path,
        source.fields(),
        source.wkbType(),
        source.sourceCrs(),
        QgsProject.instance().transformContext(),
        options,
    )
    for feature in source.getFeatures(QgsFeatureRequest()):
        writer.addFeature(feature)
    error = writer.hasError()
    del writer  # flushes and closes the file
    if error:
        Path(path).unlink(missing_ok=True)
        raise QgsProcessingException("could not write the label polygons for the engine")
    return Path(path)
