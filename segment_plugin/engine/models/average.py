"""``segment-plugin average``: one model whose weights are the mean of several fine-tunes' weights.

Fine-tunes of one base that differ only in their random seed land in one basin, and the mean of
their weights (a "model soup", Wortsman et al. 2022) scores about as well as the best of them
and better than their average, for one model's inference cost. On this project's multi-source
candidate three seeds of the frozen-batch-norm stage spread by 0.010 in mean held-out mIoU, as
much as any training lever measured (docs/multisource-candidate.md).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from segment_plugin.engine.errors import InputError, ModelError, OutputError
from segment_plugin.engine.models.package import ModelPackage, save_package
from segment_plugin.engine.models.registry import resolve_model
from segment_plugin.engine.progress import Reporter

#: card fields that must agree: what inference reads from the card
SAME_FIELDS = (
    "classes",
    "bands",
    "normalization",
    "input_dtype",
    "resolution_m",
    "tile_size",
    "input_multiple",
    "architecture",
    "class_weights",
)


def _check_cards(packages: list[ModelPackage]) -> None:
    first = packages[0]
    for other in packages[1:]:
        for name in SAME_FIELDS:
            if getattr(other.card, name) != getattr(first.card, name):
                raise InputError(
                    f"cannot average {first.path} and {other.path}: their cards differ in {name}"
                )


def _mean_weights(models: list[Any], paths: list[Path]) -> list[np.ndarray]:
    weights = [m.get_weights() for m in models]
    shapes = [[w.shape for w in ws] for ws in weights]
    for path, shape in zip(paths[1:], shapes[1:]):
        if shape != shapes[0]:
            raise ModelError(f"cannot average {paths[0]} and {path}: their networks differ")
    return [
        np.mean([ws[i] for ws in weights], axis=0, dtype=np.float64).astype(weights[0][i].dtype)
        for i in range(len(weights[0]))
    ]


def average_models(
    models: list[str],
    output: Path,
    name: str | None = None,
    overwrite: bool = False,
    reporter: Reporter | None = None,
) -> dict[str, Any]:
    """Write the package whose weights are the mean of ``models``' (same base, same card)."""
    reporter = reporter or Reporter()
    if len(models) < 2:
        raise InputError("give at least two models to average")
    if output.exists() and not overwrite:
        raise OutputError(f"{output} exists; pass --overwrite to replace it")
    packages = [resolve_model(m) for m in models]
    _check_cards(packages)
    bases = {p.card.training.get("base_model") for p in packages}
    if len(bases) > 1:
        reporter.log(
            "the models were fine-tuned from different bases "
            f"({', '.join(sorted(map(str, bases)))}): a weight average is only sound for "
            "fine-tunes of one base",
            "warning",
        )
    loaded = []
    for k, package in enumerate(packages):
        reporter.progress(k / (len(packages) + 1), f"loading {package.path}")
        loaded.append(package.load_model())
    model = loaded[0]
    model.set_weights(_mean_weights(loaded, [p.path for p in packages]))
    first = packages[0].card
    members = [
        {key: p.card.training.get(key) for key in ("seed", "best_epoch", "epochs")}
        | {"model": p.card.name, "path": str(p.path)}
        for p in packages
    ]
    card = replace(
        first,
        name=name or first.name,
        training=dict(first.training, averaged=members),
        metrics={},  # the members' figures do not describe their mean: measure it
    )
    save_package(model, card, output)
    reporter.progress(1.0, f"wrote {output}")
    return {"output": str(output), "models": [str(p.path) for p in packages]}
