"""segment on Dask: one plan, strips as tasks, parts joined; the same raster as one process.

Real Dask processes: a LocalCluster of 2 workers, and a ``dask scheduler`` with a ``dask
worker`` started as separate processes on 127.0.0.1 (what a cluster is).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import cancel_mid_run, events, run_cli, scene, shared_raster, write_raster

from segment_plugin.engine.tiling import TileGrid, strip_bounds

MANILA = "oam_manila_ph_rgb_10cm.tif"
# Manila at its own 10 cm: several strips' work (at the bundled model's 0.5 m it is one tile)
NATIVE = ("--resolution", "0.1")
DASK = Path(sys.executable).parent / "dask"


def test_strips_cover_the_grid_cut_at_tile_rows():
    grid = TileGrid(2048, 900, 512, 192)  # tile rows at 0, 320, ... 1536
    for count in (1, 2, 3, 4, 5, 99):
        bounds = strip_bounds(grid, count)
        assert bounds[0][0] == 0 and bounds[-1][1] == 2048
        assert all(a < b and b == c for (a, b), (c, _) in zip(bounds, bounds[1:]))
        assert {a for a, _ in bounds} <= set(grid.rows)
    assert len(strip_bounds(grid, 99)) == len(grid.rows)
    assert grid.tile_rows_for(640, 960) == [1, 2]  # 320..832 and 640..1152; 960.. starts after


def test_strips_segmented_apart_equal_one_run(tiny_model, tmp_path):
    """The task itself, no Dask: strips segmented one by one and stacked are the whole run."""
    from segment_plugin.engine.inference import segment
    from segment_plugin.engine.params import SegmentParams

    raster = write_raster(tmp_path / "scene.tif", scene(700, 300))
    whole = tmp_path / "whole.tif"
    segment(SegmentParams(raster, whole, model=str(tiny_model), tile=64, overlap=24))
    from segment_plugin.engine.inference import run_strip

    job = _job(raster, tiny_model)
    stacked = []
    for k, rows in enumerate(strip_bounds(job.grid, 5)):
        part = tmp_path / f"part{k}.tif"
        run_strip(job, rows, [part])
        with rasterio.open(part) as src:
            assert src.height == rows[1] - rows[0]
            top = job.profile["transform"]
            assert src.transform.f == pytest.approx(top.f + top.e * rows[0])
            stacked.append(src.read(1))
    with rasterio.open(whole) as src:
        assert np.array_equal(np.concatenate(stacked), src.read(1))


def _job(raster, model):
    """The plan segment makes for ``raster`` at tile 64 / overlap 24 (as above)."""
    from segment_plugin.engine.inference import plan_segment
    from segment_plugin.engine.models.package import ModelPackage
    from segment_plugin.engine.params import SegmentParams
    from segment_plugin.engine.progress import Reporter

    params = SegmentParams(raster, raster.with_name("unused.tif"), model=str(model), tile=64,
                           overlap=24)  # fmt: skip
    with rasterio.open(raster) as src:
        return plan_segment(params, src, ModelPackage.open(model), Reporter())


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The bundled model's classes and probabilities of the Manila tile, in one process."""
    raster = shared_raster(MANILA)
    out = tmp_path_factory.mktemp("single")
    run = run_cli("segment", str(raster), "--output", str(out / "c.tif"), *NATIVE,
                  "--probabilities", str(out / "p.tif"), "--progress", "json")  # fmt: skip
    assert run.returncode == 0, run.stderr
    return raster, out, events(run.stdout)[-2]["data"]


def _same_rasters(a: Path, b: Path) -> None:
    with rasterio.open(a) as x, rasterio.open(b) as y:
        assert x.profile["transform"] == y.profile["transform"] and x.crs == y.crs
        assert np.array_equal(x.read(), y.read())


def test_local_cluster_gives_the_single_process_rasters(single, tmp_path):
    raster, one, expected = single
    run = run_cli(
        "segment", str(raster), "--output", str(tmp_path / "c.tif"), *NATIVE,
        "--probabilities", str(tmp_path / "p.tif"), "--scheduler", "local", "--workers", "2",
        "--progress", "json", timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    got = events(run.stdout)
    assert any("4 strips on 2 workers" in e.get("message", "") for e in got)
    assert got[-2]["data"]["class_pixels"] == expected["class_pixels"]
    _same_rasters(one / "c.tif", tmp_path / "c.tif")
    _same_rasters(one / "p.tif", tmp_path / "p.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.qml", "c.tif", "c.tif.aux.xml",
                                                          "p.tif"]  # fmt: skip


def _address(info: Path) -> str | None:
    """The scheduler's address once its file is written whole (it appears empty first)."""
    try:
        return json.loads(info.read_text())["address"]
    except (OSError, ValueError, KeyError):
        return None


@contextmanager
def dask_cluster(tmp_path: Path, workers: int = 1):
    """``dask scheduler`` and ``dask worker`` (each worker under its nanny) as separate
    processes on 127.0.0.1; yields the scheduler's address."""
    info = tmp_path / "scheduler.json"
    procs = [
        subprocess.Popen([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0",
                          "--no-dashboard", "--scheduler-file", str(info)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while (address := _address(info)) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        procs.append(
            subprocess.Popen([str(DASK), "worker", address, "--nworkers", str(workers),
                              "--nthreads", "1", "--no-dashboard"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        )  # fmt: skip
        yield address
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(30)


@pytest.fixture
def cluster(tmp_path):
    with dask_cluster(tmp_path) as address:
        yield address


def test_a_separate_scheduler_and_worker_give_the_same_raster(single, cluster, tmp_path):
    raster, one, _ = single
    run = run_cli("segment", str(raster), "--output", str(tmp_path / "c.tif"), *NATIVE,
                  "--scheduler", cluster, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "on 1 workers" in run.stderr or "on 1 workers" in run.stdout
    _same_rasters(one / "c.tif", tmp_path / "c.tif")


def test_a_killed_worker_changes_nothing(single, tmp_path):
    """SIGKILL one of two workers while the strips run: its nanny starts a new one, Dask reruns
    what was lost, and the raster is still the single-process one."""
    from distributed import Client

    raster, one, _ = single
    with dask_cluster(tmp_path, workers=2) as address:
        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
            victim = next(iter(client.run(os.getpid).values()))
        command = [sys.executable, "-m", "segment_plugin.engine", "segment", str(raster),
                   "--output", str(tmp_path / "out" / "c.tif"), "--scheduler", address,
                   *NATIVE, "--progress", "json"]  # fmt: skip
        (tmp_path / "out").mkdir()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in proc.stdout:
            if "strips on 2 workers" in line:
                break
        time.sleep(2)  # the model loaded, the first strips running
        assert proc.poll() is None
        os.kill(victim, signal.SIGKILL)
        _, errors = proc.communicate(timeout=300)
        assert proc.returncode == 0, errors
    _same_rasters(one / "c.tif", tmp_path / "out" / "c.tif")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["c.qml", "c.tif",
                                                                    "c.tif.aux.xml"]  # fmt: skip


def test_unreachable_scheduler_is_one_clear_error(tmp_path):
    raster = shared_raster(MANILA)
    run = run_cli("segment", str(raster), "--output", str(tmp_path / "c.tif"),
                  "--scheduler", "tcp://127.0.0.1:9", timeout=120)  # fmt: skip
    assert run.returncode == 2
    assert "cannot reach the Dask scheduler tcp://127.0.0.1:9" in run.stderr
    assert list(tmp_path.iterdir()) == []


def test_cancel_on_dask_leaves_nothing(tmp_path):
    raster = shared_raster(MANILA)
    command = [sys.executable, "-m", "segment_plugin.engine", "segment", str(raster),
               "--output", str(tmp_path / "c.tif"), "--scheduler", "local", "--workers", "2",
               *NATIVE, "--progress", "json"]  # fmt: skip
    code, seconds, _ = cancel_mid_run(command)
    assert code == 130 and seconds < 15
    assert list(tmp_path.iterdir()) == []  # no output, no parts folder


def _rasters(folder: Path, count: int) -> list[Path]:
    folder.mkdir()
    return [
        write_raster(folder / f"r{k}.tif", scene(150 + 40 * k, 170, seed=k)) for k in range(count)
    ]


def test_many_inputs_one_run_folder_glob_and_cluster(tiny_model, tmp_path):
    """A folder and a pattern expand to rasters; each lands in --output-dir named for the
    model; a LocalCluster serving all of them writes the same rasters."""
    rasters = _rasters(tmp_path / "in", 3)
    common = ["--model", str(tiny_model), "--tile", "64", "--progress", "json"]
    one = run_cli("segment", str(rasters[0]), str(tmp_path / "in" / "r[12].tif"),
                  "--output-dir", str(tmp_path / "one"), *common)  # fmt: skip
    assert one.returncode == 0, one.stderr
    result = events(one.stdout)[-2]["data"]
    assert result["rasters"] == 3
    names = sorted(p.name for p in (tmp_path / "one").glob("*.tif"))
    assert names == ["r0_tiny.tif", "r1_tiny.tif", "r2_tiny.tif"]
    dask = run_cli("segment", str(tmp_path / "in"), "--output-dir", str(tmp_path / "dask"),
                   "--scheduler", "local", *common, timeout=300)  # fmt: skip
    assert dask.returncode == 0, dask.stderr
    logs = [e.get("message") or "" for e in events(dask.stdout)]
    assert sum("strips on 2 workers" in m for m in logs) == 3  # one cluster, three plans
    # in flight at once: the second raster is on the workers before the first is done
    first_done = logs.index(next(m for m in logs if m.startswith("r0.tif: ") and
                                 m.endswith("tiles (on Dask)") and _all_done(m)))  # fmt: skip
    assert any(m.startswith("r1.tif: Dask: ") for m in logs[:first_done])
    for name in names:
        _same_rasters(tmp_path / "one" / name, tmp_path / "dask" / name)


def test_many_inputs_refusals(tiny_model, tmp_path, capsys):
    """One clear error each (the CLI in this process: it is the messages that are tested)."""
    from segment_plugin.engine import cli

    rasters = _rasters(tmp_path / "in", 2)
    two = [str(r) for r in rasters]
    for args, message in (
        ([*two, "--output", str(tmp_path / "x.tif")], "--output-dir DIR for several"),
        ([*two, "--output-dir", str(tmp_path / "o"), "--vector", str(tmp_path / "v.gpkg")],
         "--probabilities and --vector are for one input"),
        ([str(tmp_path / "in" / "nothing*.tif"), "--output-dir", str(tmp_path / "o")],
         "no file matches"),
        ([two[0], two[0].replace("/in/", "/in/../in/"), "--output-dir", str(tmp_path / "o")],
         "several inputs would write r0_tiny.tif"),
    ):  # fmt: skip
        assert cli.main(["segment", *args, "--model", str(tiny_model)]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_local_workers_share_the_cores(monkeypatch):
    """Each local worker's model gets its share of the cores (left alone, each took them all:
    a 5000² run on 2 workers here took 31-34 s, with the shares 22.6 s, one process 19-21 s)."""
    import os

    from segment_plugin.engine.models.onnx_model import THREADS_VARIABLE, OnnxModel
    from segment_plugin.engine.models.registry import resolve_model
    from segment_plugin.engine.scaleout import _thread_limits

    limits = _thread_limits(2)
    share = max(1, (os.cpu_count() or 1) // 2)
    assert limits == {THREADS_VARIABLE: str(share), "TF_NUM_INTRAOP_THREADS": str(share),
                      "OMP_NUM_THREADS": str(share)}  # fmt: skip
    monkeypatch.setenv(THREADS_VARIABLE, "1")
    model = OnnxModel(resolve_model("landcover").path / "model.onnx")
    assert model.session.get_session_options().intra_op_num_threads == 1


def _fragmented(path: Path) -> Path:
    """A 4096 × 1200 class map: blocks, speckle, and a woodland band with holes from top to
    bottom (one region through every range of rows)."""
    rng = np.random.default_rng(11)
    data = np.kron(rng.integers(0, 5, (150, 512)), np.ones((8, 8), int)).astype(np.uint8)
    speckle = rng.random(data.shape) < 0.02
    data[speckle] = rng.integers(0, 5, speckle.sum())
    data[:, 1000:1100] = 2
    data[5::40, 1010:1090:20] = 1
    data[600:700, :50] = 255
    return write_raster(path, data[None], nodata=255)


def _features(path: Path) -> list[tuple]:
    """Every feature as (class, area, perimeter, normalised WKB), sorted: equal if identical."""
    import geopandas as gpd
    import shapely

    frame = gpd.read_file(path)
    wkb = shapely.to_wkb(shapely.normalize(frame.geometry.values))
    return sorted(zip(frame.class_id, frame.area_m2, frame.perim_m, wkb))


@pytest.fixture(scope="module")
def fragmented(tmp_path_factory):
    """The fragmented map and its polygons vectorised in one process."""
    folder = tmp_path_factory.mktemp("fragmented")
    raster = _fragmented(folder / "classes.tif")
    run = run_cli("vectorize", str(raster), "--output", str(folder / "one.gpkg"),
                  "--progress", "json")  # fmt: skip
    assert run.returncode == 0, run.stderr
    return raster, _features(folder / "one.gpkg"), events(run.stdout)[-2]["data"]


def test_vectorize_on_a_local_cluster_gives_the_single_process_polygons(fragmented, tmp_path):
    raster, expected, summary = fragmented
    run = run_cli("vectorize", str(raster), "--output", str(tmp_path / "v.gpkg"),
                  "--scheduler", "local", "--workers", "2", "--progress", "json",
                  timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    got = events(run.stdout)
    assert any("3 ranges of rows on 2 workers" in e.get("message", "") for e in got)
    assert got[-2]["data"]["classes"] == summary["classes"]
    assert _features(tmp_path / "v.gpkg") == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.gpkg"]  # no parts left


def test_vectorize_on_a_separate_cluster_to_a_shapefile(fragmented, cluster, tmp_path):
    raster, expected, _ = fragmented
    run = run_cli("vectorize", str(raster), "--output", str(tmp_path / "v.shp"),
                  "--scheduler", cluster, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert _features(tmp_path / "v.shp") == expected


def test_vectorize_simplify_is_refused_on_dask(fragmented, tmp_path):
    from segment_plugin.engine.errors import InputError
    from segment_plugin.engine.params import VectorizeParams
    from segment_plugin.engine.vectorize import vectorize

    params = VectorizeParams(fragmented[0], tmp_path / "v.gpkg", simplify=1.0, scheduler="local")
    with pytest.raises(InputError, match="--simplify keeps the topology of the whole coverage"):
        vectorize(params)
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_raster_in_a_batch_stops_it_naming_the_raster(tiny_model, tmp_path):
    """The rasters before it are finished and committed; it leaves nothing; exit code 2."""
    rasters = _rasters(tmp_path / "in", 3)
    rasters[1].write_text("not a GeoTIFF")
    run = run_cli("segment", *map(str, rasters), "--output-dir", str(tmp_path / "out"),
                  "--model", str(tiny_model), "--tile", "64")  # fmt: skip
    assert run.returncode == 2
    assert "r1.tif" in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.suffix == ".tif") == [
        "r0_tiny.tif"
    ]
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_a_damaged_raster_among_many_on_dask_stops_them(tiny_model, tmp_path):
    """One error naming it; what is left in the output folder is only complete rasters."""
    rasters = _rasters(tmp_path / "in", 3)
    rasters[1].write_text("not a GeoTIFF")
    bad = run_cli("segment", str(tmp_path / "in"), "--output-dir", str(tmp_path / "bad"),
                  "--model", str(tiny_model), "--tile", "64", "--progress", "json",
                  "--scheduler", "local", timeout=300)  # fmt: skip
    errors = [e["message"] for e in events(bad.stdout) if e["event"] == "error"]
    assert bad.returncode == 2 and len(errors) == 1 and errors[0].startswith("r1.tif: "), errors
    left = sorted((tmp_path / "bad").iterdir())
    assert not [p for p in left if p.name.startswith(".")]
    for path in left:
        assert path.name.startswith(("r0_tiny.", "r2_tiny.")), path.name
        if path.suffix == ".tif":
            with rasterio.open(path) as src:
                assert src.read(1).shape == (src.height, src.width)


def _all_done(message: str) -> bool:
    done, _, total = message.split(": ", 1)[1].split(" ")[0].partition("/")
    return done == total


def test_gather_hands_every_result_over_even_when_a_task_finishes_while_looked_at():
    """A task that finished between the look at its status and the count of finished tasks was
    counted but never handed to ``on_result``: its part was not appended (seen as 21,187 of
    30,683 polygons through Processing on 4 ranges, once)."""
    from segment_plugin.engine.progress import Reporter
    from segment_plugin.engine.scaleout import gather

    class Future:
        def __init__(self, looks_pending: int) -> None:
            self.looks = looks_pending

        @property
        def status(self) -> str:
            self.looks -= 1
            return "pending" if self.looks >= 0 else "finished"

        def done(self) -> bool:  # finished as soon as anyone counts
            return True

        def result(self) -> str:
            return "part"

    class Client:
        def cancel(self, futures: list) -> None:
            raise AssertionError("nothing failed")

    handed = []
    futures = [Future(0), Future(2), Future(0)]  # the middle one finishes while being looked at
    results = gather(Client(), futures, [1] * 3, "rows", Reporter(), lambda k, _: handed.append(k))
    assert results == ["part"] * 3 and sorted(handed) == [0, 1, 2]
