"""segment_plugin: land-cover segmentation for QGIS.

QGIS calls :func:`classFactory`; everything QGIS-specific is imported lazily inside it so that the
engine process (which imports ``segment_plugin.engine``) never touches QGIS or Qt.
"""


def classFactory(iface):  # noqa: N802 - the name QGIS looks for
    """Create the plugin instance for QGIS."""
    from segment_plugin.plugin import SegmentPlugin

    return SegmentPlugin(iface)
