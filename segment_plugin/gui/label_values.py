"""The distinct label values of a polygon layer's field or of a class raster, for the mapping table.

Runs on the QGIS side with the QGIS API and the standard library only.
"""

from __future__ import annotations

import array

from qgis.core import Qgis, QgsPalettedRasterRenderer, QgsRasterLayer, QgsVectorLayer

#: QGIS raster data types whose pixels Python's array module can read (typecode)
_TYPECODES = {
    Qgis.Byte: "B",
    Qgis.UInt16: "H",
    Qgis.Int16: "h",
    Qgis.UInt32: "I",
    Qgis.Int32: "i",
}
MAX_VALUES = 256  # more distinct values than this is not a class raster


def field_values(layer: QgsVectorLayer, field: str) -> list:
    """Distinct non-null values of ``field``, sorted (numbers numerically, text by text)."""
    index = layer.fields().indexFromName(field)
    if index < 0:
        return []
    values = [v for v in layer.uniqueValues(index) if v is not None and str(v) != "NULL"]
    return sorted(values, key=lambda v: (not isinstance(v, (int, float)), v))


def raster_values(layer: QgsRasterLayer, max_side: int = 2000) -> list[int]:
    """Distinct class values of a single-band integer raster (nodata left out).

    A paletted layer lists its classes; otherwise the band is read once at up to ``max_side``
    pixels a side (a class too small to show at that resolution may be missed: it is still
    trained on if the engine finds it, and refused with a clear message if it has no class).
    """
    renderer = layer.renderer()
    if isinstance(renderer, QgsPalettedRasterRenderer):
        return sorted(int(c.value) for c in renderer.classes())
    provider = layer.dataProvider()
    typecode = _TYPECODES.get(provider.dataType(1))
    if typecode is None:
        return []
    scale = min(1.0, max_side / max(layer.width(), layer.height(), 1))
    width, height = max(1, round(layer.width() * scale)), max(1, round(layer.height() * scale))
    block = provider.block(1, layer.extent(), width, height)
    values = set(array.array(typecode, bytes(block.data())))
    if provider.sourceHasNoDataValue(1):
        values.discard(int(provider.sourceNoDataValue(1)))
    return sorted(values)[:MAX_VALUES]
