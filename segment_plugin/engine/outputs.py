"""Output files: checked before the long run, written under a temporary name, renamed at the end.

A failed or cancelled job leaves nothing behind — no partial GeoTIFF, no half-written shapefile
(a shapefile is several files: each sidecar is committed or removed with it).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from segment_plugin.engine.errors import OutputError

#: Files that belong to a shapefile (written by GDAL or read by QGIS).
SHAPEFILE_SIDECARS = (".shp", ".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx", ".qml")


#: Deflate ratios of our GeoTIFFs, measured on the bundled model's maps of the Gorinchem, Manila
#: and Pix4D rasters: class rasters 17–33×, uint8 probabilities 1.8–1.9×. A run is refused only
#: when even the ratios few maps beat would not fit (first), and warned at the typical ones.
CLASS_RATIOS = (50.0, 15.0)
PROBABILITY_RATIOS = (3.0, 1.7)


@dataclass(frozen=True)
class SpaceNeed:
    """What one output will take on its disk: its uncompressed bytes and deflate ratios."""

    path: Path
    what: str
    raw_bytes: int
    ratios: tuple[float, float]  # (few maps compress better, typical)


def check_free_space(needs: Sequence[SpaceNeed], warn: Callable[[str], None]) -> None:
    """Refuse, before the long run, outputs that cannot fit their disk; warn when they may not."""
    disks: dict[int, list[SpaceNeed]] = {}
    for need in needs:
        disks.setdefault(os.stat(need.path.parent).st_dev, []).append(need)
    for on_disk in disks.values():
        folder = on_disk[0].path.parent
        free = shutil.disk_usage(folder).free
        least = sum(n.raw_bytes / n.ratios[0] for n in on_disk)
        usual = sum(n.raw_bytes / n.ratios[1] for n in on_disk)
        parts = ", ".join(f"{n.what} {_size(n.raw_bytes)} uncompressed" for n in on_disk)
        if least > free:
            raise OutputError(
                f"the outputs need at least about {_size(least)} in {folder} ({parts}), but "
                f"only {_size(free)} is free there: free some space or write elsewhere"
            )
        if usual > free:
            warn(
                f"the outputs usually take about {_size(usual)} ({parts}) and {folder} has "
                f"{_size(free)} free: the disk may fill (then nothing is kept)"
            )


def _size(n: float) -> str:
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n:.0f} bytes"


def aux_xml(path: Path) -> Path:
    """GDAL's sidecar of ``path`` (PAM: palette, category names, statistics)."""
    return path.with_name(path.name + ".aux.xml")


def family(path: Path) -> list[Path]:
    """The files of one output: a shapefile's sidecars, else the file, .aux.xml and .qml style."""
    if path.suffix.lower() == ".shp":
        return [path.with_suffix(ext) for ext in SHAPEFILE_SIDECARS]
    return [path, aux_xml(path), path.with_suffix(".qml")]


def check_output_path(path: Path, input_path: Path, overwrite: bool) -> None:
    """Refuse an output that is a folder, the input, exists (unless overwrite), or is unwritable."""
    if path.is_dir():
        raise OutputError(f"the output {path} is a folder; give a file name in it")
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


def _owner() -> str:
    """Who writes a temporary: this host and process, so a later run can tell a dead writer."""
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32]
    return f"{host}-{os.getpid()}"


def temporary_sibling(path: Path) -> Path:
    """A hidden name in the same folder (same file system, so the final rename is atomic).

    ``.<name>.<random>.<host>-<pid>.partial<suffix>``: which output and which writer it belongs to.
    """
    suffix = path.suffix or ".tif"
    return path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.{_owner()}.partial{suffix}")


def remove_stale_temporaries(path: Path) -> None:
    """Delete the temporaries of ``path`` left by a run of this host that was killed.

    A writer on another host (a shared folder) or still alive here is left alone.
    """
    host = _owner().rsplit("-", 1)[0]
    pattern = re.compile(
        rf"^\.{re.escape(path.stem)}\.[0-9a-f]{{8}}\.{re.escape(host)}-(\d+)\.partial"
    )
    for candidate in path.parent.glob(f".{glob.escape(path.stem)}.*.partial*"):
        match = pattern.match(candidate.name)
        if match and not _alive(int(match.group(1))):
            candidate.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


@contextmanager
def committed(paths: Sequence[Path]) -> Iterator[list[Path]]:
    """Temporary names for ``paths``; renamed to them only if the block succeeds, else deleted.

    Temporaries a killed earlier run left for the same outputs are removed first.
    """
    for path in paths:
        remove_stale_temporaries(path)
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


@contextmanager
def committed_folder(folder: Path) -> Iterator[Path]:
    """A hidden staging folder beside ``folder``; its files move into ``folder`` on success.

    A refused, failed or cancelled job leaves no folder and no partial set of files.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(
        tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".partial")
    )
    try:
        yield staging
        folder.mkdir(exist_ok=True)
        for path in sorted(staging.iterdir()):
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
