"""QGIS style files (``.qml``) written beside outputs, so QGIS shows classes with names and colours.

Plain XML: the engine never imports QGIS. QGIS loads ``<name>.qml`` next to ``<name>.tif`` as the
layer's default style.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import quoteattr

from segment_plugin.engine.models.package import ClassInfo


def paletted_raster_qml(classes: Sequence[ClassInfo]) -> str:
    """A paletted renderer: one legend entry per class, nodata transparent."""
    entries = "\n".join(
        f"        <paletteEntry value={quoteattr(str(c.code))} color={quoteattr(c.color.lower())} "
        f'label={quoteattr(c.name)} alpha="255"/>'
        for c in classes
    )
    return f"""<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>
<qgis version="3.22" styleCategories="Symbology">
  <pipe>
    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" nodataColor="">
      <rasterTransparency/>
      <minMaxOrigin>
        <limits>None</limits>
        <extent>WholeRaster</extent>
        <statAccuracy>Estimated</statAccuracy>
        <cumulativeCutLower>0.02</cumulativeCutLower>
        <cumulativeCutUpper>0.98</cumulativeCutUpper>
        <stdDevFactor>2</stdDevFactor>
      </minMaxOrigin>
      <colorPalette>
{entries}
      </colorPalette>
      <colorramp type="randomcolors" name="[source]"/>
    </rasterrenderer>
  </pipe>
  <blendMode>0</blendMode>
</qgis>
"""


def write_qml(raster_path: Path, classes: Sequence[ClassInfo]) -> Path:
    """Write ``<raster>.qml`` beside the raster; returns its path."""
    qml = raster_path.with_suffix(".qml")
    qml.write_text(paletted_raster_qml(classes), encoding="utf-8")
    return qml
