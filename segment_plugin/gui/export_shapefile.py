"""Export a polygon layer (e.g. class polygons) to a shapefile with its .prj and a UTF-8 .cpg."""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsCoordinateTransformContext, QgsVectorFileWriter, QgsVectorLayer
from qgis.PyQt.QtWidgets import QFileDialog


def export_to_shapefile(layer: QgsVectorLayer, path: str | Path) -> Path:
    """Write ``layer`` to ``path`` (.shp added if missing); raise RuntimeError on failure."""
    path = Path(path)
    if path.suffix.lower() != ".shp":
        path = path.with_suffix(".shp")
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "ESRI Shapefile"
    options.fileEncoding = "UTF-8"  # GDAL writes the .cpg that says so
    result = QgsVectorFileWriter.writeAsVectorFormatV3(
        layer, str(path), QgsCoordinateTransformContext(), options
    )
    error, message = result[0], result[1]
    if error != QgsVectorFileWriter.NoError:
        raise RuntimeError(f"exporting {layer.name()} to {path.name} failed: {message}")
    return path


def ask_and_export(iface) -> Path | None:
    """The action: export the active vector layer to a shapefile the user chooses."""
    from qgis.core import Qgis

    layer = iface.activeLayer()
    if not isinstance(layer, QgsVectorLayer):
        iface.messageBar().pushMessage(
            "Export polygons", "select a polygon layer in the Layers panel first", Qgis.Warning, 5
        )
        return None
    suggested = str(Path(layer.source().split("|")[0]).with_suffix(".shp"))
    path, _ = QFileDialog.getSaveFileName(
        iface.mainWindow(), "Export polygons to shapefile", suggested, "Shapefile (*.shp)"
    )
    if not path:
        return None
    try:
        written = export_to_shapefile(layer, path)
    except RuntimeError as exc:
        iface.messageBar().pushMessage("Export polygons", str(exc), Qgis.Critical, 0)
        return None
    iface.messageBar().pushMessage("Export polygons", f"wrote {written}", Qgis.Success, 5)
    return written
