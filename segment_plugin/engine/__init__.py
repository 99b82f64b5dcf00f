"""The engine: TensorFlow/Keras, rasterio, numpy, shapely, geopandas. Never imports QGIS or Qt.

It runs in its own virtual environment, as the ``segment-plugin`` CLI and as the subprocess the
QGIS side starts (``python -m segment_plugin.engine COMMAND ... --progress json``).
"""
