"""Training sources: several labelled sets, each with its ground resolution, share and hold-out.

A sources file (``train --sources FILE``) is JSON::

    {"sources": [
      {"name": "roads", "folder": "massachusetts_roads", "gsd_m": 1.0, "weight": 0.15,
       "validation": ["10378780_15*", "22828930_15*"], "licence": "none stated"},
      ...]}

``folder`` is relative to the file's folder, or to ``--data-root``. ``validation`` holds glob
patterns of the scene names (paths inside the folder) kept aside for validation — whole tiles or
scenes, never patches of a training image. ``weight`` is the source's share of the training
patches (normalised over the sources). Images that are georeferenced carry their own resolution;
``gsd_m`` is for those that are not.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from segment_plugin.engine.errors import InputError
from segment_plugin.engine.training.chips import Scene, pairs_folder


@dataclass(frozen=True)
class Source:
    """One labelled set of a multi-source training."""

    name: str
    folder: Path
    weight: float
    gsd_m: float | None = None
    validation: tuple[str, ...] = ()
    licence: str = ""
    # a regular expression on an image's name whose first group names the larger scene it was
    # cut from: a stretching model's images of one scene are stretched together (scene_groups)
    scene: str = ""


def read_sources(path: Path, root: Path | None = None) -> list[Source]:
    """The sources of a sources file, folders resolved against ``root`` (default: its folder)."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text())["sources"]
        sources = [
            Source(
                name=str(e["name"]),
                folder=Path(root or path.parent) / e["folder"],
                weight=float(e["weight"]),
                gsd_m=float(e["gsd_m"]) if e.get("gsd_m") is not None else None,
                validation=tuple(str(p) for p in e.get("validation", ())),
                licence=str(e.get("licence", "")),
                scene=str(e.get("scene", "")),
            )
            for e in entries
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(
            f"{path}: not a sources file ({exc}); expected "
            '{"sources": [{"name", "folder", "weight", "gsd_m", "validation"}]}'
        ) from exc
    names = [s.name for s in sources]
    if not sources or len(set(names)) != len(names):
        raise InputError(f"{path}: give one or more sources, each with its own name")
    bad = [s.name for s in sources if not (s.weight > 0) or (s.gsd_m is not None and s.gsd_m <= 0)]
    if bad:
        raise InputError(f"{path}: weight and gsd_m must be positive ({', '.join(bad)})")
    for s in sources:
        try:
            if s.scene and re.compile(s.scene).groups != 1:
                raise re.error("it needs one group: the scene's name")
        except re.error as exc:
            raise InputError(f"{path}: source {s.name}: scene {s.scene!r} ({exc})") from exc
    return sources


def scene_groups(scenes: Sequence[Scene], sources: Sequence[Source]) -> list[str]:
    """Per scene, the larger scene it was cut from (its source's ``scene`` pattern), else itself.

    A stretching model sees a raster's statistics; a chip of it alone would be stretched by
    its own, which a whole forest tile or a roof-only chip distorts.
    """
    patterns = {s.name: re.compile(s.scene) for s in sources if s.scene}
    groups = []
    for k, scene in enumerate(scenes):
        match = patterns[scene.source].search(scene.name) if scene.source in patterns else None
        groups.append(f"{scene.source}/{match.group(1)}" if match else f"#{k}")
    return groups


def is_validation(scene_name: str, patterns: Sequence[str]) -> bool:
    """Whether a scene name (its path inside the source folder) matches a hold-out pattern."""
    return any(fnmatch.fnmatch(scene_name, p) for p in patterns)


def load_sources(
    sources: Sequence[Source], codes: Sequence[int], bands: int | None
) -> tuple[list[Scene], list[Scene]]:
    """Training and validation scenes of every source; each source must keep some of each."""
    train, val = [], []
    for source in sources:
        scenes = pairs_folder(source.folder, codes, bands, source.gsd_m, source.name)
        held, kept = [], []
        for scene in scenes:
            (held if is_validation(scene.name, source.validation) else kept).append(scene)
        if not kept or (source.validation and not held):
            raise InputError(
                f"source {source.name}: its validation patterns {list(source.validation)} hold "
                f"{len(held)} of its {len(scenes)} images; keep some for training"
                + (" and match some" if source.validation else "")
            )
        train += kept
        val += held
    return train, val


def held_out(source: Source, codes: Sequence[int], bands: int | None) -> list[Scene]:
    """A source's held-out images only (the others are not read)."""
    return pairs_folder(
        source.folder,
        codes,
        bands,
        source.gsd_m,
        source.name,
        select=lambda name: is_validation(name, source.validation),
    )


def source_record(
    sources: Sequence[Source], train: Sequence[Scene], val: Sequence[Scene], names: Sequence[str]
) -> list[dict]:
    """What the card's training record says of each source (``names``: the class names)."""
    total = sum(s.weight for s in sources)
    return [
        {
            "name": s.name,
            "folder": str(s.folder),
            "gsd_m": s.gsd_m,
            "share_of_patches": round(s.weight / total, 4),
            "training_images": sum(1 for x in train if x.source == s.name),
            "validation_images": sum(1 for x in val if x.source == s.name),
            "labelled_classes": next(
                (
                    [names[i] for i in x.labelled]
                    for x in train
                    if x.source == s.name and x.labelled
                ),
                "all",
            ),
            "licence": s.licence,
        }
        for s in sources
    ]
