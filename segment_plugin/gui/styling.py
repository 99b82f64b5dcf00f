"""Styles for result layers: class polygons coloured like the class raster's palette."""

from __future__ import annotations

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsFillSymbol,
    QgsPalettedRasterRenderer,
    QgsRasterLayer,
    QgsRendererCategory,
    QgsVectorLayer,
)
from qgis.PyQt.QtGui import QColor


def raster_classes(layer: QgsRasterLayer) -> list[tuple[int, str, QColor]]:
    """(code, name, colour) of a class raster styled with a paletted renderer (its .qml)."""
    renderer = layer.renderer()
    if not isinstance(renderer, QgsPalettedRasterRenderer):
        return []
    return [(int(c.value), c.label, QColor(c.color)) for c in renderer.classes()]


def style_class_polygons(layer: QgsVectorLayer, classes: list[tuple[int, str, QColor]]) -> None:
    """Categorized by ``class_id``, one category per class with its raster colour and name."""
    categories = []
    for code, name, colour in classes:
        symbol = QgsFillSymbol.createSimple(
            {
                "color": colour.name(),
                "outline_color": colour.darker(150).name(),
                "outline_width": "0.1",
            }
        )
        categories.append(QgsRendererCategory(code, symbol, name))
    layer.setRenderer(QgsCategorizedSymbolRenderer("class_id", categories))
    layer.triggerRepaint()
