"""Output files: checked before the long run, written under a temporary name, renamed at the end.

A failed or cancelled job leaves nothing behind — no partial GeoTIFF, no half-written shapefile
(a shapefile is several files: each sidecar is committed or removed with it).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from segment_plugin.engine.errors import OutputError

#: Files that belong to a shapefile (written by GDAL or read by QGIS).
SHAPEFILE_SIDECARS = (".shp", ".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx", ".qml")


def family(path: Path) -> list[Path]:
    """The files that make up one output: a shapefile's sidecars, else the file + .aux.xml."""
    if path.suffix.lower() == ".shp":
        return [path.with_suffix(ext) for ext in SHAPEFILE_SIDECARS]
    return [path, path.with_name(path.name + ".aux.xml")]


def check_output_path(path: Path, input_path: Path, overwrite: bool) -> None:
    """Refuse an output that is the input, exists (without overwrite) or cannot be written."""
    if path.resolve() == input_path.resolve():
        raise OutputError(f"the output {path} is the input; choose another file")
    if path.exists() and not overwrite:
        raise OutputError(f"{path} exists; pass --overwrite to replace it")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"the output folder {folder} does not exist")
    _probe(path, f"cannot write in {folder}")


def ensure_writable_folder(folder: Path, what: str) -> None:
    """Create ``folder`` if needed and prove a file can be written there, before a long job."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {what} {folder}: {exc.strerror}") from exc
    _probe(folder / "probe", f"cannot write in {what} {folder}")


def _probe(path: Path, message: str) -> None:
    probe = temporary_sibling(path)
    try:  # os.access says yes to root even on read-only file systems: really try
        probe.touch()
    except OSError as exc:
        raise OutputError(f"{message}: {exc.strerror}") from exc
    probe.unlink()


def temporary_sibling(path: Path) -> Path:
    """A hidden name in the same folder (same file system, so the final rename is atomic)."""
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.partial{path.suffix or '.tif'}")


@contextmanager
def committed(paths: Sequence[Path]) -> Iterator[list[Path]]:
    """Temporary names for ``paths``; renamed to them only if the block succeeds, else deleted."""
    temps = [temporary_sibling(p) for p in paths]
    try:
        yield temps
        for temp, final in zip(temps, paths):
            for old in family(final):  # no stale sidecar (e.g. a .qix index) may survive
                if old.suffix != ".qml":
                    old.unlink(missing_ok=True)
            for part, target in zip(family(temp), family(final)):
                if part.exists():
                    os.replace(part, target)
    finally:
        for temp in temps:
            for leftover in family(temp):
                leftover.unlink(missing_ok=True)
