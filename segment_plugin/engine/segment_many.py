"""Many rasters in one segment run: ``segment A.tif B.tif DIR 'tiles/*.tif' --output-dir OUT``.

Each input becomes ``OUT/<name>_<model>.tif`` (as the QGIS dialog names outputs), each its own
plan. In one process they run one after the other. On Dask several rasters are in flight at once
(their plans made and their parts assembled in client threads, their strips on the workers), so
the workers stay busy while a raster is planned or assembled; with ``--scheduler local`` one
cluster serves every raster, so workers load the model once for all. Each output is committed on
its own: a failure or cancel stops the run — rasters already finished stay, complete; nothing is
left of those that did not finish.
"""

from __future__ import annotations

import glob
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
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
RASTERS_IN_FLIGHT = 4  # on Dask: rasters planned, run and assembled at once


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
    model = resolve_model(template.model).card.name
    targets = [output_dir / f"{p.stem}_{model}.tif" for p in inputs]
    clashes = [t.name for t, n in Counter(targets).items() if n > 1]
    if clashes:
        raise InputError(f"several inputs would write {clashes[0]}: rename them or run them apart")
    outputs.ensure_writable_folder(output_dir, "--output-dir")
    for source, target in zip(inputs, targets):
        outputs.check_output_path(target, source, template.overwrite)
    with ExitStack() as stack:
        scheduler = template.scheduler
        if scheduler == "local":  # one cluster for every raster
            from segment_plugin.engine.scaleout import dask_client

            client = stack.enter_context(dask_client("local", template.workers))
            scheduler = client.scheduler.address
        runs = [
            replace(template, input=source, output=target, scheduler=scheduler)
            for source, target in zip(inputs, targets)
        ]
        if scheduler is None:
            results = []
            for k, params in enumerate(runs):
                reporter.log(f"raster {k + 1} of {len(runs)}: {params.input.name}")
                part = ScaledReporter(reporter, k / len(runs), (k + 1) / len(runs))
                results.append(_one(params, part))
        else:
            results = _in_flight(runs, reporter)
    return {"outputs": results, "rasters": len(results), "output_dir": str(output_dir)}


def _one(params: SegmentParams, reporter: Reporter) -> dict[str, Any]:
    from segment_plugin.engine.inference import segment

    try:
        return segment(params, reporter)
    except SegmentPluginError as exc:
        raise type(exc)(f"{params.input.name}: {exc}") from exc


def _in_flight(runs: list[SegmentParams], reporter: Reporter) -> list[dict[str, Any]]:
    """Up to RASTERS_IN_FLIGHT rasters at once; the first failure stops the others."""
    together = _Together(reporter, [p.input.name for p in runs])
    with ThreadPoolExecutor(min(len(runs), RASTERS_IN_FLIGHT)) as pool:
        futures = [pool.submit(_one, p, together.reporter(k)) for k, p in enumerate(runs)]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in futures if f in done and f.exception() is not None]
        if failed:
            reporter.cancel.set()  # the others stop at their next check and leave nothing
            wait(futures)
            raise failed[0].exception()
    return [f.result() for f in futures]


class _Together:
    """Several rasters' events through one reporter.

    One event at a time, overall progress the mean of theirs, each message naming its raster,
    one cancel token for all.
    """

    def __init__(self, parent: Reporter, names: list[str]) -> None:
        self.parent, self.names = parent, names
        self.fractions = [0.0] * len(names)
        self.lock = threading.Lock()

    def reporter(self, index: int) -> Reporter:
        return _OneOf(self, index)

    def emit(self, index: int, event: str, **fields: Any) -> None:
        with self.lock:
            if event == "progress":
                self.fractions[index] = fields["fraction"]
                fields["fraction"] = round(sum(self.fractions) / len(self.fractions), 4)
            if fields.get("message"):
                fields["message"] = f"{self.names[index]}: {fields['message']}"
            self.parent.emit(event, **fields)


class _OneOf(Reporter):
    """One raster's reporter among several in flight."""

    def __init__(self, together: _Together, index: int) -> None:
        super().__init__()
        self.together, self.index = together, index
        self.cancel = together.parent.cancel

    def emit(self, event: str, **fields: Any) -> None:
        self.together.emit(self.index, event, **fields)
