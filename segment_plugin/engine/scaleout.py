"""Segment on a Dask cluster: one job's strips as tasks, their parts joined into one raster.

The plan is :class:`~segment_plugin.engine.inference.SegmentJob`, the task
:func:`~segment_plugin.engine.inference.run_strip` — the very code a single-process run runs as
its one task. Each strip writes a part (a GeoTIFF as high as the strip) into a hidden folder
beside the output, which must be on a filesystem every worker sees; the parts are copied into
the output in order (windowed, so memory stays one block). Cancel (or a failed task) cancels
the futures and removes the folder: a task still running writes into a folder that is gone and
fails, leaving nothing.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from segment_plugin.engine import raster_io
from segment_plugin.engine.errors import DependencyError, InputError
from segment_plugin.engine.inference import SegmentJob, create_outputs, run_strip
from segment_plugin.engine.models.package import ModelPackage
from segment_plugin.engine.progress import Reporter
from segment_plugin.engine.tiling import strip_bounds

STRIPS_PER_WORKER = 2  # a worker that finishes early takes another strip


@contextmanager
def dask_client(scheduler: str, workers: int) -> Iterator[Any]:
    """A client of ``scheduler``: ``local`` starts a LocalCluster of ``workers`` processes."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise DependencyError(f"Dask's distributed is not installed: {exc}") from exc
    with ExitStack() as stack:
        if scheduler == "local":
            cluster = stack.enter_context(
                LocalCluster(
                    n_workers=workers,
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=None,
                    silence_logs=40,
                    env=_thread_limits(workers),
                )
            )
            yield stack.enter_context(Client(cluster))
            return
        _reachable(scheduler)
        try:
            client = stack.enter_context(Client(scheduler, timeout=30))
            client.wait_for_workers(1, timeout=60)
        except TimeoutError as exc:  # (an OSError: first)
            raise InputError(
                f"no Dask worker joined {scheduler} within 60 s (or it did not answer)"
            ) from exc
        except OSError as exc:
            raise InputError(f"cannot reach the Dask scheduler {scheduler}: {exc}") from exc
        yield client


def _thread_limits(workers: int) -> dict[str, str]:
    """Each local worker's share of the cores for the model's thread pools.

    ONNX Runtime, TensorFlow and OpenMP each size their pool to the machine: left alone, every
    worker's model takes every core.
    """
    from segment_plugin.engine.models.onnx_model import THREADS_VARIABLE

    share = str(max(1, (os.cpu_count() or 1) // workers))
    names = (THREADS_VARIABLE, "TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS")
    return {name: share for name in names}


def run_on_dask(
    job: SegmentJob, paths: list[Path], scheduler: str, workers: int, reporter: Reporter
) -> np.ndarray:
    """Segment ``job`` on Dask into ``paths``; returns the class pixel counts."""
    with ExitStack() as stack:
        client = stack.enter_context(dask_client(scheduler, workers))
        joined = len(client.scheduler_info()["workers"])
        strips = strip_bounds(job.grid, max(1, joined) * STRIPS_PER_WORKER)
        folder = Path(tempfile.mkdtemp(dir=paths[0].parent, prefix=f".{paths[0].stem}.",
                                       suffix=".parts"))  # fmt: skip
        stack.callback(shutil.rmtree, folder, True)
        _check_workers(client, job.input, folder)
        reporter.log(f"Dask: {len(strips)} strips on {joined} workers ({scheduler})")
        parts = [[folder / f"{k:04d}_{p.name}" for p in paths] for k in range(len(strips))]
        futures = [
            client.submit(run_strip, job, rows, part, pure=False)
            for rows, part in zip(strips, parts)
        ]
        counts = _gather(client, futures, job, strips, reporter)
        _assemble(job, strips, parts, paths)
        return counts


def _reachable(address: str) -> None:
    """A refused or unknown address fails at once (Dask's client retries for its timeout)."""
    from urllib.parse import urlsplit

    where = urlsplit(address)
    try:
        socket.create_connection((where.hostname, where.port or 8786), timeout=10).close()
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot reach the Dask scheduler {address}: {exc}") from exc


def _gather(client: Any, futures: list, job: SegmentJob, strips: list, reporter: Reporter):
    """Wait for the tasks, reporting progress by tiles done; cancel them on a cancel."""
    tiles = [len(job.grid.tile_rows_for(*rows)) * len(job.grid.cols) for rows in strips]
    total, reported = sum(tiles), -1
    try:
        while True:
            reporter.cancel.check()
            for future in futures:
                if future.status == "error":
                    future.result()  # raises the task's error here
            finished = sum(n for f, n in zip(futures, tiles) if f.done())
            if finished != reported:
                reporter.progress(finished / total, f"{finished}/{total} tiles (strips on Dask)")
                reported = finished
            if finished == total:
                return np.sum([f.result() for f in futures], axis=0)
            time.sleep(0.2)
    except BaseException:
        client.cancel(futures)
        raise


def _check_workers(client: Any, source: str, folder: Path) -> None:
    """Every worker must read the input and write the parts folder (a shared filesystem)."""
    answers = client.run(_probe, source, str(folder))  # one per worker
    problems = {worker: problem for worker, problem in answers.items() if problem}
    if problems:
        worker, problem = next(iter(problems.items()))
        raise InputError(
            f"Dask worker {worker} ({len(problems)} of {len(answers)}) {problem}: "
            "inputs and outputs must be on a filesystem every worker sees"
        )


def _probe(source: str, folder: str) -> str | None:
    if not os.path.isfile(source):
        return f"on {socket.gethostname()} cannot see the input {source}"
    probe = Path(folder) / f".probe-{socket.gethostname()}-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return f"on {socket.gethostname()} cannot write to {folder} ({exc.strerror})"
    return None


def _assemble(job: SegmentJob, strips: list, parts: list[list[Path]], paths: list[Path]) -> None:
    """The parts, in row order, into the outputs, one block of rows at a time."""
    import rasterio
    from rasterio.windows import Window

    card = ModelPackage.open(job.model).card
    with ExitStack() as stack:
        targets = create_outputs(stack, paths, job.profile, card)
        for (first, last), files in zip(strips, parts):
            for target, file in zip(targets, files):
                if target is None:
                    continue
                with rasterio.open(file) as part:
                    for row in range(0, last - first, raster_io.OUTPUT_BLOCK):
                        n = min(raster_io.OUTPUT_BLOCK, last - first - row)
                        block = part.read(window=Window(0, row, part.width, n))
                        target.write(block, window=Window(0, first + row, part.width, n))
