"""`make bench-scaleout`: segment on 1 and 2 local Dask workers against one process, same raster.

The 20000² mosaic of the demo orthophoto (bench_segment.mosaic), the bundled model at segment's
defaults. Each Dask run gets a LocalCluster started here as ``--scheduler local`` starts it (one
thread per worker, the model's pools at cores ÷ workers), so that the workers can be asked for
their peak memory afterwards. The engine's events, timestamped as they arrive, split each run
into plan (until the tile grid is logged: input opened, statistics pass), tasks, and assembly
(the parts copied into the output). Prints one JSON object, with the national-orthophoto
projection from the measured per-worker throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import rasterio

sys.path.insert(0, str(Path(__file__).parent))
from bench_segment import WORK, bench_setup, mosaic  # noqa: E402

from segment_plugin.engine.scaleout import _thread_limits  # noqa: E402

NATIONAL_GPX = 665  # the Netherlands at 25 cm
GPU_MPX_PER_S = 40.0  # assumed per GPU worker, not measured here: see the report's note


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed_run(raster: Path, out: Path, scheduler: str | None) -> dict:
    """One ``segment`` process: wall, its own peak RSS, and when plan and tasks ended."""
    command = [sys.executable, "-m", "segment_plugin.engine", "segment", str(raster),
               "--output", str(out), "--overwrite", "--progress", "json"]  # fmt: skip
    if scheduler:
        command += ["--scheduler", scheduler]
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    planned = tasks_done = None
    for line in proc.stdout:
        now = time.perf_counter() - started
        event = json.loads(line)
        message = event.get("message") or ""
        if planned is None and "tiles of" in message:
            planned = now
        if tasks_done is None and (event["event"] == "result" or _all_tiles_done(message)):
            tasks_done = now
    errors = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"segment failed: {errors[-2000:]}")
    return {
        "wall_s": round(wall, 1),
        "plan_s": round(planned or 0.0, 1),
        "tasks_s": round(tasks_done - (planned or 0.0), 1),
        "assembly_s": round(wall - tasks_done, 1),
        "client_peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
    }


def _all_tiles_done(message: str) -> bool:
    """``"N/N tiles (on Dask)"``: every task finished."""
    done, _, total = message.split(" ")[0].partition("/")
    return message.endswith("tiles (on Dask)") and done == total


def on_cluster(raster: Path, out: Path, workers: int) -> dict:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                     dashboard_address=None, silence_logs=40,
                     env=_thread_limits(workers)) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        run = timed_run(raster, out, cluster.scheduler_address)
        peaks = client.run(_peak_rss_mb)
    run["worker_peak_rss_mb"] = [round(v, 1) for v in peaks.values()]
    return run


def same_raster(a: Path, b: Path) -> bool:
    with rasterio.open(a) as x, rasterio.open(b) as y:
        return all(
            np.array_equal(x.read(1, window=w), y.read(1, window=w)) for _, w in x.block_windows(1)
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20000, help="mosaic side in pixels")
    args = parser.parse_args()
    bench_setup()
    raster = mosaic(args.size)
    mpx = args.size**2 / 1e6
    single_out = WORK / "scaleout_single.tif"
    runs = {"one_process": timed_run(raster, single_out, None)}
    for workers in (1, 2):
        out = WORK / f"scaleout_dask{workers}.tif"
        runs[f"dask_{workers}"] = run = on_cluster(raster, out, workers)
        run["identical_to_one_process"] = same_raster(single_out, out)
        out.unlink()
    single_out.unlink()
    for run in runs.values():
        run["mpx_per_s"] = round(mpx / run["wall_s"], 3)
    one = runs["one_process"]["wall_s"]
    for workers in (1, 2):
        runs[f"dask_{workers}"]["speedup_over_one_process"] = round(
            one / runs[f"dask_{workers}"]["wall_s"], 3
        )
    # a worker here has cores ÷ 2 = one core: the 2-worker run's task rate per worker
    per_worker = mpx / runs["dask_2"]["tasks_s"] / 2
    projection = {
        f"{n}_cpu_workers_hours": round(NATIONAL_GPX * 1e3 / (per_worker * n) / 3600, 1)
        for n in (10, 100)
    }
    projection.update(
        {
            f"{n}_gpu_workers_hours": round(NATIONAL_GPX * 1e3 / (GPU_MPX_PER_S * n) / 3600, 2)
            for n in (10, 100)
        }
    )
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "raster": f"{args.size}x{args.size} mosaic of the demo orthophoto ({mpx:g} Mpx), "
        "bundled model, segment's defaults",
        "runs": runs,
        "per_cpu_worker_mpx_per_s": round(per_worker, 3),
        "national_orthophoto": {
            "gpx": NATIONAL_GPX,
            "assumed_gpu_worker_mpx_per_s": GPU_MPX_PER_S,
            "note": "CPU: the measured rate of one single-core worker here times the workers "
            "(tasks only: the plan's statistics pass and the assembly come on top, and a "
            "national orthophoto is many rasters, up to four in flight at once); GPU: assumed, "
            "not measured on this machine",
            **projection,
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
