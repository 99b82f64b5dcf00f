"""Many rasters in one segment run: ``segment A.tif B.tif DIR 'tiles/*.tif' --output-dir OUT``.

Each input becomes ``OUT/<name>_<model>.tif`` (as the QGIS dialog names outputs), one after the
other, each its own plan, its strips in parallel on Dask when a scheduler is given; with
``--scheduler local`` one cluster serves every raster, so workers load the model once for all.
Each output is committed on its own: a failure or cancel stops the run with the rasters before it
finished and complete, and nothing of the one that failed.
"""

from __future__ import annotations

import glob
from collections import Counter
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

from segment_plugin.engine import outputs
from segment_plugin.engine.errors import InputError, SegmentPluginError
from segment_plugin.engine.models.registry import resolve_model
from segment_plugin.engine.params import SegmentParams
from segment_plugin.engine.progress import Reporter, ScaledReporter

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")


def expand_inputs(items: Sequence[Path]) -> list[Path]:
    """Files as given, a folder's rasters (sorted), a glob pattern's matches; each once."""
    found: list[Path] = []
    for item in items:
        text = str(item)
        if item.is_dir():
            matches = sorted(p for p in item.iterdir() if p.suffix.lower() in RASTER_SUFFIXES)
            if not matches:
                raise InputError(f"{item} holds no rasters ({', '.join(RASTER_SUFFIXES)})")
        elif any(c in text for c in "*?[") and not item.exists():
            matches = sorted(Path(p) for p in glob.glob(text))
            if not matches:
                raise InputError(f"no file matches {text}")
        else:
            matches = [item]
        found += [p for p in matches if p not in found]
    return found


def segment_many(
    template: SegmentParams, inputs: list[Path], output_dir: Path, reporter: Reporter
) -> dict[str, Any]:
    """Segment each input into ``output_dir``; the results in input order."""
    from segment_plugin.engine.inference import segment

    model = resolve_model(template.model).card.name
    targets = [output_dir / f"{p.stem}_{model}.tif" for p in inputs]
    clashes = [t.name for t, n in Counter(targets).items() if n > 1]
    if clashes:
        raise InputError(f"several inputs would write {clashes[0]}: rename them or run them apart")
    outputs.ensure_writable_folder(output_dir, "--output-dir")
    for source, target in zip(inputs, targets):
        outputs.check_output_path(target, source, template.overwrite)
    results = []
    with ExitStack() as stack:
        scheduler = template.scheduler
        if scheduler == "local":  # one cluster for every raster
            from segment_plugin.engine.scaleout import dask_client

            client = stack.enter_context(dask_client("local", template.workers))
            scheduler = client.scheduler.address
        for k, (source, target) in enumerate(zip(inputs, targets)):
            reporter.log(f"raster {k + 1} of {len(inputs)}: {source.name}")
            params = replace(template, input=source, output=target, scheduler=scheduler)
            part = ScaledReporter(reporter, k / len(inputs), (k + 1) / len(inputs))
            try:
                results.append(segment(params, part))
            except SegmentPluginError as exc:
                raise type(exc)(f"{source.name}: {exc}") from exc
    return {"outputs": results, "rasters": len(results), "output_dir": str(output_dir)}
