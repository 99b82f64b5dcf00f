"""Styles and names for result layers: class raster from its .qml, polygons in its colours."""

from __future__ import annotations

from pathlib import Path

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


def result_layer_names(source: str, model: str | None) -> tuple[str, str]:
    """Layer names that say what they are: (class raster, class polygons)."""
    by = f" ({model})" if model else ""
    return f"{source} — classes{by}", f"{source} — class polygons{by}"


def style_class_raster(layer: QgsRasterLayer) -> None:
    """Apply the ``.qml`` written beside the class raster: only the model's classes, named.

    QGIS loads it by itself when a user adds the file, but Processing loads its results without
    default styles (the 256-entry legend of numbers the toolbox showed).
    """
    qml = Path(layer.source()).with_suffix(".qml")
    if qml.exists():
        layer.loadNamedStyle(str(qml))
        layer.triggerRepaint()
