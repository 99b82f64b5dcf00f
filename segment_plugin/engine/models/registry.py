"""Where models come from: bundled ones in ``resources/models/``, the user's own folder, a path.

``--model landcover`` names a bundled (or user) model; ``--model /some/folder`` is a package on
disk. User models live in ``$SEGMENT_PLUGIN_MODELS`` or ``~/.local/share/segment_plugin/models``;
a user model never shadows a bundled one of the same name (the bundled one is never overwritten).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from segment_plugin import plugin_files
from segment_plugin.engine.errors import InputError, ModelError
from segment_plugin.engine.models.package import CARD_FILE, ModelPackage

ENV_USER_MODELS = "SEGMENT_PLUGIN_MODELS"
DEFAULT_MODEL = "landcover"


def bundled_models_dir() -> Path:
    """``resources/models`` of this plugin."""
    return plugin_files.resources_dir() / "models"


def user_models_dir() -> Path:
    """The user's model folder (fine-tuned models go here)."""
    override = os.environ.get(ENV_USER_MODELS, "").strip()
    if override:
        if Path(override).exists() and not Path(override).is_dir():
            raise InputError(f"{ENV_USER_MODELS}={override} is a file: point it at a folder")
        return Path(override)
    base = os.environ.get("XDG_DATA_HOME", "").strip() or str(Path.home() / ".local" / "share")
    return Path(base) / "segment_plugin" / "models"


def _packages_in(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if (p / CARD_FILE).is_file())


def list_models() -> list[tuple[str, ModelPackage | ModelError]]:
    """Every model found, as (origin, package or the error that makes it unusable)."""
    found: list[tuple[str, ModelPackage | ModelError]] = []
    for origin, folder in (("bundled", bundled_models_dir()), ("user", user_models_dir())):
        for path in _packages_in(folder):
            try:
                found.append((origin, ModelPackage.open(path)))
            except ModelError as exc:
                found.append((origin, exc))
    return found


def resolve_model(name_or_path: str) -> ModelPackage:
    """A model by bundled/user name or by folder path; a clear error when there is none."""
    candidate = Path(name_or_path).expanduser()
    if candidate.is_dir():
        return ModelPackage.open(candidate)
    if os.sep not in name_or_path and "/" not in name_or_path:
        for folder in (bundled_models_dir(), user_models_dir()):
            if (folder / name_or_path / CARD_FILE).is_file():
                return ModelPackage.open(folder / name_or_path)
    names = sorted(
        {p.name for f in (bundled_models_dir(), user_models_dir()) for p in _packages_in(f)}
    )
    known = ", ".join(names) if names else "none installed"
    raise ModelError(f"unknown model {name_or_path!r} (known models: {known})")


def add_onnx_model(path: Path, name: str | None = None, overwrite: bool = False) -> ModelPackage:
    """A package in the user's folder for an ONNX file (Deepness' format or our export).

    Its card comes from the file (our card, or one derived from Deepness' metadata), so a file
    that is not a segmentation model is refused here, not at its first run.
    """
    import shutil

    from segment_plugin.engine import outputs
    from segment_plugin.engine.models.onnx_model import read_card
    from segment_plugin.engine.models.package import MODEL_FILE, ONNX_FILE

    if path.suffix.lower() != ".onnx" or not path.is_file():
        raise InputError(f"{path}: not an .onnx file")
    card = read_card(path)
    card = replace(card, name=name or card.name)
    if (bundled_models_dir() / card.name).exists():
        raise InputError(f"{card.name!r} is a bundled model's name: choose another with --name")
    target = user_models_dir() / card.name
    if target.exists() and not overwrite:
        raise InputError(f"a user model {card.name!r} exists ({target}): --overwrite replaces it")
    with outputs.committed_folder(target) as staging:
        shutil.copyfile(path, staging / ONNX_FILE)
        (staging / CARD_FILE).write_text(card.to_json(), encoding="utf-8")
    (target / MODEL_FILE).unlink(missing_ok=True)  # an overwritten Keras model is not this one
    return ModelPackage.open(target)
