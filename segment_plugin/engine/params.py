"""Typed parameter objects: one per job, shared by the CLI, Processing and the dialogs.

The QGIS side builds the same object's fields as command-line flags; the engine saves the object
as JSON next to what it wrote, so every output says how it was made.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from segment_plugin.engine.errors import InputError

PARAMS_SCHEMA_VERSION = 1
DEVICES = ("auto", "cpu", "gpu")


@dataclass
class SegmentParams:
    """``segment-plugin segment``: raster in, class raster (and probabilities) out."""

    input: Path
    output: Path
    model: str = "landcover"
    probabilities: Path | None = None
    bands: tuple[int, ...] | None = None  # 1-based input band per model band; None: from the card
    resolution: float | None = None  # metres per pixel to work at; None: the model's
    tile: int | None = None  # None: the model card's tile size
    overlap: int | None = None  # None: a quarter of the tile
    batch: int = 4
    device: str = "auto"
    tta: bool = False
    overwrite: bool = False

    def __post_init__(self) -> None:
        self.input = Path(self.input)
        self.output = Path(self.output)
        if self.probabilities is not None:
            self.probabilities = Path(self.probabilities)
        if self.bands is not None:
            self.bands = tuple(int(b) for b in self.bands)
        if self.device not in DEVICES:
            raise InputError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.batch < 1:
            raise InputError(f"batch must be at least 1, got {self.batch}")
        if self.tile is not None and self.tile < 16:
            raise InputError(f"tile must be at least 16 pixels, got {self.tile}")
        if self.overlap is not None and self.overlap < 0:
            raise InputError(f"overlap must not be negative, got {self.overlap}")
        if self.resolution is not None and not self.resolution > 0:
            raise InputError(f"resolution must be positive, got {self.resolution}")

    def to_json(self) -> str:
        """The parameters as JSON, with the schema version."""
        data: dict[str, Any] = {"schema_version": PARAMS_SCHEMA_VERSION, "job": "segment"}
        for key, value in asdict(self).items():
            data[key] = str(value) if isinstance(value, Path) else value
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str) -> SegmentParams:
        """Read parameters written by :meth:`to_json`."""
        data = json.loads(text)
        if (
            data.pop("schema_version", None) != PARAMS_SCHEMA_VERSION
            or data.pop("job", None) != "segment"
        ):
            raise InputError("not a segment parameter file of this engine version")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
