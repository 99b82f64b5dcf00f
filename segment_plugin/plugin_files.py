"""Find the plugin's own files (metadata.txt, resources/) wherever the package lives.

In a source checkout they sit beside the package (``repo/metadata.txt``, ``repo/resources``);
in the installed plugin (``.../python/plugins/segment_plugin/``) ``make package`` puts them inside
it. Every caller goes through this module, so nobody hard-codes either layout. Standard library
only: both the QGIS side and the engine import it.
"""

from __future__ import annotations

import configparser
from functools import lru_cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def _first_existing(name: str) -> Path:
    for base in (PACKAGE_DIR, PACKAGE_DIR.parent):
        candidate = base / name
        if candidate.exists():
            return candidate
    raise FileNotFoundError(
        f"{name} not found in {PACKAGE_DIR} or {PACKAGE_DIR.parent}: the plugin is incomplete"
    )


def resources_dir() -> Path:
    """The ``resources/`` folder (icons, bundled models)."""
    return _first_existing("resources")


def resource_path(*parts: str) -> Path:
    """A file under ``resources/``, e.g. ``resource_path("icons", "segment.svg")``."""
    return resources_dir().joinpath(*parts)


@lru_cache(maxsize=1)
def metadata() -> dict[str, str]:
    """The ``[general]`` section of metadata.txt, the single source of name and version."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(_first_existing("metadata.txt"), encoding="utf-8")
    return dict(parser["general"])


def version() -> str:
    """The plugin version from metadata.txt."""
    return metadata()["version"]


def __getattr__(name: str) -> str:
    """``__version__`` on demand, for pyproject.toml's dynamic version."""
    if name == "__version__":
        return version()
    raise AttributeError(name)
