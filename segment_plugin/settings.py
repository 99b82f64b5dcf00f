"""The plugin's settings: one typed object over QgsSettings.

Environment variables override stored values (tests and power users), and the engine never reads
QgsSettings: whatever it needs arrives as command-line arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from qgis.core import QgsSettings

from segment_plugin.runner import EngineLocation, locate_engine

_PREFIX = "segment_plugin/"


@dataclass
class PluginSettings:
    """Values the plugin remembers between sessions."""

    engine_python: str = ""
    last_model: str = "landcover"
    tile_size: int = 0  # 0: the model's
    output_folder: str = ""  # "": beside the input raster
    dask_scheduler: str = ""  # Processing's default SCHEDULER ("": one engine process)

    @classmethod
    def load(cls) -> PluginSettings:
        """Read every field from QgsSettings, falling back to the defaults."""
        store = QgsSettings()
        values = {}
        for f in fields(cls):
            default = f.default
            values[f.name] = store.value(_PREFIX + f.name, default, type=type(default))
        return cls(**values)

    def save(self) -> None:
        """Write every field to QgsSettings."""
        store = QgsSettings()
        for f in fields(self):
            store.setValue(_PREFIX + f.name, getattr(self, f.name))

    def engine(self) -> EngineLocation:
        """The engine Python: SEGMENT_PLUGIN_PYTHON, else this setting, else the default .venv."""
        return locate_engine(self.engine_python)
