"""A raster layer as a file the engine can read, exporting it through QGIS when needed.

Plain GDAL files are passed as they are. Anything else (WMS/XYZ, a memory or virtual raster), or a
request for a sub-extent, is written to a temporary GeoTIFF by QGIS first, at the layer's
resolution (or the one asked for), so the engine — which never sees QGIS — can read it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from qgis.core import (
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProject,
    QgsRasterFileWriter,
    QgsRasterLayer,
    QgsRasterPipe,
    QgsRectangle,
)


def is_plain_file(layer: QgsRasterLayer) -> bool:
    """Whether the engine can open the layer's source directly."""
    return layer.providerType() == "gdal" and Path(layer.source().split("|")[0]).is_file()


def engine_readable_path(
    layer: QgsRasterLayer,
    extent: QgsRectangle | None,
    feedback: QgsProcessingFeedback,
    max_pixels: int = 40_000 * 40_000,
) -> tuple[Path, Path | None]:
    """(path to read, temporary file to delete afterwards or None)."""
    whole = extent is None or extent.isEmpty() or extent.contains(layer.extent())
    if is_plain_file(layer) and whole:
        return Path(layer.source().split("|")[0]), None
    area = layer.extent() if whole else extent.intersect(layer.extent())
    if area.isEmpty():
        raise QgsProcessingException("the chosen extent does not overlap the raster layer")
    res_x = (
        layer.rasterUnitsPerPixelX() if layer.rasterUnitsPerPixelX() > 0 else area.width() / 1000
    )
    res_y = (
        layer.rasterUnitsPerPixelY() if layer.rasterUnitsPerPixelY() > 0 else area.height() / 1000
    )
    width, height = max(1, round(area.width() / res_x)), max(1, round(area.height() / res_y))
    if width * height > max_pixels:
        raise QgsProcessingException(
            f"exporting {width}×{height} pixels from {layer.name()} is too large; choose a smaller "
            "extent"
        )
    handle, name = tempfile.mkstemp(prefix="segment_input_", suffix=".tif")
    os.close(handle)
    feedback.pushInfo(
        f"{layer.name()} is not a plain raster file or only part of it is used: exporting "
        f"{width}×{height} pixels to a temporary GeoTIFF first"
    )
    pipe = QgsRasterPipe()
    if not pipe.set(layer.dataProvider().clone()):
        raise QgsProcessingException(f"cannot read {layer.name()}")
    writer = QgsRasterFileWriter(name)
    writer.setOutputFormat("GTiff")
    context = QgsProject.instance().transformContext()
    error = writer.writeRaster(pipe, width, height, area, layer.crs(), context)
    if error != QgsRasterFileWriter.NoError:
        Path(name).unlink(missing_ok=True)
        raise QgsProcessingException(f"exporting {layer.name()} failed (error {error})")
    return Path(name), Path(name)
