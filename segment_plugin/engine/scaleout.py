"""Jobs on a Dask cluster: a plan's tasks (ranges of rows) write parts, the client joins them.

Segmenting:
the plan is :class:`~segment_plugin.engine.inference.SegmentJob`, the task
:func:`~segment_plugin.engine.inference.run_strip` — the very code a single-process run runs as
its one task. Each strip writes a part (a GeoTIFF as high as the strip) into a hidden folder
beside the output, which must be on a filesystem every worker sees; the parts are copied into
the output in order (windowed, so memory stays one block). Cancel (or a failed task) cancels
the futures and removes the folder: a task still running writes into a folder that is gone and
fails, leaving nothing. Vectorising (``vectorize``) uses the same client, parts folder, worker
check and progress.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
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

TASKS_PER_WORKER = 2  # a worker that finishes early takes another task


@contextmanager
def dask_client(scheduler: str, workers: int, wait_s: int = 60) -> Iterator[Any]:
    """A client of ``scheduler``: ``local`` starts a LocalCluster of ``workers`` processes.

    A remote scheduler must have a worker within ``wait_s`` seconds (0: do not wait).
    """
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
            if wait_s:
                client.wait_for_workers(1, timeout=wait_s)
        except TimeoutError as exc:  # (an OSError: first)
            raise InputError(
                f"no Dask worker joined {scheduler} within {wait_s} s (or it did not answer)"
            ) from exc
        except OSError as exc:
            raise InputError(f"cannot reach the Dask scheduler {scheduler}: {exc}") from exc
        yield client


def scheduler_report(scheduler: str) -> dict[str, Any]:
    """What ``scheduler`` is, for the status table: its workers, or why it cannot be used."""
    report: dict[str, Any] = {"scheduler": scheduler, "workers": 0, "threads": 0, "error": None}
    if scheduler == "local":
        cores = os.cpu_count() or 1
        report["summary"] = f"a local cluster is started for each run (this machine: {cores} cores)"
        return report
    try:
        with dask_client(scheduler, 1, wait_s=0) as client:
            workers = client.scheduler_info()["workers"].values()
            report["workers"] = len(workers)
            report["threads"] = sum(w.get("nthreads", 0) for w in workers)
            report["version"] = client.get_versions()["client"]["packages"]["distributed"]
    except (InputError, DependencyError) as exc:
        report["error"] = str(exc)
        return report
    if not report["workers"]:
        report["error"] = f"{scheduler} answers but has no workers: start some (dask worker …)"
        return report
    report["summary"] = (
        f"connected: {report['workers']} workers, {report['threads']} threads "
        f"(distributed {report['version']})"
    )
    return report


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
        folder = parts_folder(stack, paths[0])
        joined = check_workers(client, job.input, folder)
        strips = strip_bounds(job.grid, joined * TASKS_PER_WORKER)
        reporter.log(f"Dask: {len(strips)} strips on {joined} workers ({scheduler})")
        parts = [[folder / f"{k:04d}_{p.name}" for p in paths] for k in range(len(strips))]
        futures = [
            client.submit(run_strip, job, rows, part, pure=False)
            for rows, part in zip(strips, parts)
        ]
        tiles = [len(job.grid.tile_rows_for(*rows)) * len(job.grid.cols) for rows in strips]
        counts = np.sum(gather(client, futures, tiles, "tiles", reporter), axis=0)
        _assemble(job, strips, parts, paths)
        return counts


def parts_folder(stack: ExitStack, output: Path) -> Path:
    """A hidden folder beside ``output`` for the tasks' parts, removed when ``stack`` closes."""
    folder = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.stem}.", suffix=".parts"))
    stack.callback(shutil.rmtree, folder, True)
    return folder


def _reachable(address: str) -> None:
    """A refused or unknown address fails at once (Dask's client retries for its timeout)."""
    from urllib.parse import urlsplit

    where = urlsplit(address)
    try:
        socket.create_connection((where.hostname, where.port or 8786), timeout=10).close()
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot reach the Dask scheduler {address}: {exc}") from exc


#: a task's statuses that ``Future.done()`` counts (an error raises before it is counted)
DONE = ("finished", "cancelled")


def gather(
    client: Any,
    futures: list,
    sizes: list[int],
    unit: str,
    reporter: Reporter,
    on_result: Callable[[int, Any], None] | None = None,
) -> list:
    """The tasks' results, reporting progress by the sizes of those done.

    ``on_result(index, result)`` is called as each task finishes (the client's share of the
    assembly, done while the other tasks run). On a cancel or a failed task the other tasks are
    cancelled.
    """
    total, reported = sum(sizes), -1
    handled: set[int] = set()
    try:
        while True:
            reporter.cancel.check()
            # one look at each task: one that finished after it was looked at counts next time,
            # once its result has been handed to on_result (a part was lost in that window)
            statuses = [future.status for future in futures]
            for index, (future, status) in enumerate(zip(futures, statuses)):
                if status == "error":
                    future.result()  # raises the task's error here
                if on_result and status == "finished" and index not in handled:
                    handled.add(index)
                    on_result(index, future.result())
            finished = sum(n for status, n in zip(statuses, sizes) if status in DONE)
            if finished != reported:
                reporter.progress(finished / total, f"{finished}/{total} {unit} (on Dask)")
                reported = finished
            if finished == total:
                return [f.result() for f in futures]
            time.sleep(0.2)
    except BaseException:
        client.cancel(futures)
        raise


def check_workers(client: Any, source: str, folder: Path) -> int:
    """Every worker must read the input and write the parts folder (a shared filesystem).

    Returns how many workers there are.
    """
    answers = client.run(_probe, source, str(folder))  # one per worker
    problems = {worker: problem for worker, problem in answers.items() if problem}
    if problems:
        worker, problem = next(iter(problems.items()))
        raise InputError(
            f"Dask worker {worker} ({len(problems)} of {len(answers)}) {problem}: "
            "inputs and outputs must be on a filesystem every worker sees"
        )
    return max(1, len(answers))


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
