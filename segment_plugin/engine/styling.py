"""Class names and colours beside a class raster, for QGIS and for any GDAL-based tool.

``<name>.qml``: QGIS loads it as the layer's default style (only the model's classes, named).
``<name>.tif.aux.xml``: GDAL's own sidecar with the colour table (one entry per code up to the
last class), the category names and a raster attribute table (value, class, colour). Every GDAL
tool reads it, and QGIS 3.22 opening the file without the .qml lists just the named classes; a
colour table inside a GeoTIFF always has 256 entries, listed as 256 mostly black classes.
Plain XML: the engine never imports QGIS.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from segment_plugin.engine.models.package import ClassInfo
from segment_plugin.engine.outputs import aux_xml


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


def write_qml(raster_path: Path, classes: Sequence[ClassInfo]) -> None:
    """Write ``<raster>.qml`` beside the raster."""
    raster_path.with_suffix(".qml").write_text(paletted_raster_qml(classes), encoding="utf-8")


# GDAL's raster attribute table codes: field types and usages (gdal.h GDALRATFieldType/Usage)
_INTEGER, _STRING = 0, 2
_MIN_MAX, _NAME, _RED, _GREEN, _BLUE = 5, 2, 6, 7, 8


def pam_categories_xml(classes: Sequence[ClassInfo]) -> str:
    """GDAL PAM XML: band 1's palette, category names (by code) and a thematic attribute table."""
    by_code = {c.code: c for c in classes}
    codes = range(max(by_code) + 1)
    names = "\n".join(
        f"      <Category>{escape(by_code[code].name if code in by_code else '')}</Category>"
        for code in codes
    )
    palette = "\n".join(
        '      <Entry c1="{}" c2="{}" c3="{}" c4="{}"/>'.format(
            *((*by_code[code].rgb(), 255) if code in by_code else (0, 0, 0, 0))
        )
        for code in codes
    )
    fields = [("Value", _INTEGER, _MIN_MAX), ("Class", _STRING, _NAME)]
    fields += [("Red", _INTEGER, _RED), ("Green", _INTEGER, _GREEN), ("Blue", _INTEGER, _BLUE)]
    definitions = "\n".join(
        f'      <FieldDefn index="{i}"><Name>{name}</Name><Type>{kind}</Type>'
        f"<Usage>{usage}</Usage></FieldDefn>"
        for i, (name, kind, usage) in enumerate(fields)
    )
    rows = "\n".join(
        f'      <Row index="{i}"><F>{c.code}</F><F>{escape(c.name)}</F>'
        + "".join(f"<F>{v}</F>" for v in c.rgb())
        + "</Row>"
        for i, c in enumerate(sorted(classes, key=lambda c: c.code))
    )
    return f"""<PAMDataset>
  <PAMRasterBand band="1">
    <ColorInterp>Palette</ColorInterp>
    <CategoryNames>
{names}
    </CategoryNames>
    <ColorTable>
{palette}
    </ColorTable>
    <GDALRasterAttributeTable tableType="thematic">
{definitions}
{rows}
    </GDALRasterAttributeTable>
  </PAMRasterBand>
</PAMDataset>
"""


def write_class_sidecars(raster_path: Path, classes: Sequence[ClassInfo]) -> None:
    """Write ``<raster>.qml`` and ``<raster>.tif.aux.xml``."""
    aux_xml(raster_path).write_text(pam_categories_xml(classes), encoding="utf-8")
    write_qml(raster_path, classes)
