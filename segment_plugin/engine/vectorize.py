"""Class raster → clean class polygons (shapefile or GeoPackage), streaming by strips of rows.

One feature per connected region along pixel edges (``polygonize``), so neighbouring classes
share their boundaries exactly and the area of a class is its pixel count × pixel area. The job
is a plan (:class:`VectorizePlan`), tasks (:func:`polygonize_rows`: a range of rows into a file,
the regions touching its edges handed back) and an assembly. One process runs one task over
every row; on Dask each task writes a part, the regions at the parts' edges are joined by the
same merger that joins strips, and the parts are appended to the output.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segment_plugin.engine import outputs, raster_io
from segment_plugin.engine.errors import InputError
from segment_plugin.engine.params import VectorizeParams
from segment_plugin.engine.polygonize import Batch, RegionMerger, polygonize, strip_rows_for
from segment_plugin.engine.postprocess import majority_filter, sieve_strip
from segment_plugin.engine.progress import Reporter, ScaledReporter

STRIP_ROWS = 1024  # cleaning
WRITE_BATCH = 5000
SHAPEFILE_LIMIT = 2_000_000_000  # bytes: a shapefile's .shp/.dbf cannot pass 2 GB


def class_names(dataset: Any) -> dict[int, str]:
    """Class names from a class raster's metadata (written by ``segment``), else {}."""
    tags = dataset.tags()
    names: dict[int, str] = {}
    try:
        for entry in json.loads(tags.get("CLASSES", "[]")):
            names[int(entry["code"])] = str(entry["name"])
    except (ValueError, KeyError, TypeError):
        names = {}
    for key, value in tags.items():
        if key.startswith("CLASS_") and key[6:].isdigit():
            names.setdefault(int(key[6:]), value)
    return names


def present_codes(dataset: Any, exclude: set[int] | frozenset[int] = frozenset()) -> set[int]:
    """Class codes that occur in a one-band raster (one pass of block reads), minus ``exclude``."""
    seen: set[int] = set()
    for _, window in dataset.block_windows(1):
        seen.update(np.unique(dataset.read(1, window=window)).tolist())
    return seen - set(exclude)


def open_class_raster(path: Path) -> Any:
    """Open a one-band integer raster, or raise a clear InputError."""
    dataset = raster_io.open_input(path, min_size=1)
    dtype = np.dtype(dataset.dtypes[0])
    if dataset.count != 1 or not np.issubdtype(dtype, np.integer):
        what = f"{dataset.count} bands" if dataset.count != 1 else f"{dtype} values"
        dataset.close()
        raise InputError(
            f"{path} is not a class raster ({what}); a class raster has one band of integer codes"
        )
    return dataset


class _Measure:
    """Area (m²) and perimeter (m) of world-coordinate polygons in the raster's CRS."""

    def __init__(self, crs: Any) -> None:
        self.geod = None
        self.factor = 1.0
        if crs is not None and crs.is_geographic:
            from pyproj import CRS

            self.geod = CRS(crs.to_wkt()).get_geod()
        elif crs is not None and crs.linear_units_factor:
            self.factor = crs.linear_units_factor[1]

    def __call__(self, geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import shapely

        if self.geod is None:
            return shapely.area(geoms) * self.factor**2, shapely.length(geoms) * self.factor
        measured = [self.geod.geometry_area_perimeter(g) for g in geoms]
        return np.abs([m[0] for m in measured]), np.asarray([m[1] for m in measured])


def _ogr_crs(crs: Any) -> str | None:
    """The CRS as geopandas hands it to OGR: its EPSG code where it has one, else WKT1."""
    if crs is None:
        return None
    from pyproj import CRS

    crs = CRS.from_user_input(crs)
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt("WKT1_GDAL")


def _metres_per_map_unit(dataset: Any) -> float:
    """For tolerances in metres: metres per CRS unit (per degree of latitude if geographic)."""
    crs = dataset.crs
    if crs is None:
        return 1.0
    if crs.is_geographic:
        return 111_320.0
    return crs.linear_units_factor[1] if crs.linear_units_factor else 1.0


def _cleaned_copy(dataset: Any, params: VectorizeParams, temp: Path, reporter: Reporter) -> Path:
    """Smoothed and/or sieved copy of the class raster, strip by strip with exact halos."""
    import rasterio
    from rasterio.windows import Window

    nodata = None if dataset.nodata is None else int(dataset.nodata)
    size_px = 0
    if params.min_area:
        pixel = raster_io.pixel_size_m(dataset)
        pixel_area = pixel[0] * pixel[1] if pixel else 1.0
        size_px = max(1, math.ceil(params.min_area / pixel_area))
        if size_px > dataset.width * dataset.height:
            raise InputError(
                f"--min-area {params.min_area:g} m² is more than the whole raster "
                f"({dataset.width * dataset.height * pixel_area:g} m²): no region could stay"
            )
        reporter.log(f"minimum mapping unit {params.min_area:g} m² = {size_px} pixels")
    sieve_halo = size_px if size_px > 1 else 0
    smooth_halo = 1 if params.smooth else 0
    height, width = dataset.height, dataset.width
    profile = raster_io.output_profile(dataset.profile, 1, nodata, dtype=dataset.dtypes[0])
    with rasterio.open(temp, "w", **profile) as dst:
        for row in range(0, height, STRIP_ROWS):
            reporter.cancel.check()
            n = min(STRIP_ROWS, height - row)
            start = max(0, row - sieve_halo - smooth_halo)
            end = min(height, row + n + sieve_halo + smooth_halo)
            data = dataset.read(1, window=Window(0, start, width, end - start))
            if params.smooth:
                data = majority_filter(data, nodata)
                cut_top = smooth_halo if start > 0 else 0  # rows smoothed without neighbours
                cut_bottom = smooth_halo if end < height else 0
                data = data[cut_top : data.shape[0] - cut_bottom]
                start += cut_top
            if sieve_halo or size_px == 1:
                data = sieve_strip(data, max(size_px, 1), nodata)
            dst.write(data[row - start : row - start + n], 1, window=Window(0, row, width, n))
            reporter.progress(0.3 * (row + n) / height, "cleaning the class raster")
    return temp


def _writer_options(path: Path, layer: str) -> dict[str, Any]:
    if path.suffix.lower() == ".shp":
        return {"driver": "ESRI Shapefile", "encoding": "UTF-8"}
    return {"driver": "GPKG", "layer": layer}


#: GeoPackage 1.2: what QGIS 3.22's GDAL (3.6) reads without "only partially supported" warnings
CREATION_OPTIONS = {"GPKG": {"dataset_options": {"VERSION": "1.2"}}}


@dataclass(frozen=True)
class VectorizePlan:
    """What every task needs (picklable): the raster to polygonise and how to name its regions."""

    source: str  # the class raster, or its cleaned copy
    selected: tuple[int, ...] | None  # class codes to keep; None: all
    names: dict[int, str]
    layer: str  # GeoPackage layer name (parts too)
    simplify: float | None = None  # tolerance in map units (one process only: the whole coverage)


@dataclass
class Written:
    """What a task wrote: features and area (m²) per class code."""

    counts: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    areas: dict[int, float] = field(default_factory=lambda: defaultdict(float))

    @property
    def features(self) -> int:
        """Features written, all classes."""
        return sum(self.counts.values())

    def add(self, other: Written) -> None:
        """Count another writer's features too."""
        for code, n in other.counts.items():
            self.counts[code] += n
            self.areas[code] += other.areas[code]


class _Writer:
    """Polygons in the raster's CRS → features of one file, in batches of WRITE_BATCH."""

    def __init__(self, path: Path, plan: VectorizePlan, dataset: Any, reporter: Reporter) -> None:
        self.path, self.plan, self.reporter = path, plan, reporter
        self.crs = _ogr_crs(dataset.crs)
        self.measure = _Measure(dataset.crs)
        self.options = _writer_options(path, plan.layer)
        self.written = Written()
        self.pending: list[Batch] = []  # batches not yet written (all of them when simplifying)
        self.held = 0
        self.shapefile_bytes = 0

    def add(self, codes: np.ndarray, polygons: np.ndarray) -> None:
        if len(codes):
            self.pending.append((codes, polygons))
            self.held += len(codes)
        if self.held >= WRITE_BATCH and self.plan.simplify is None:
            self.flush()

    def flush(self) -> None:
        """Write the held batches."""
        import shapely

        if not self.pending:
            return
        codes = np.concatenate([c for c, _ in self.pending])
        world = np.concatenate([p for _, p in self.pending])
        self.pending, self.held = [], 0
        if self.plan.simplify is None:
            self._write(codes, world)
            return
        self.reporter.log(f"simplifying {len(codes)} polygons")
        world = shapely.coverage_simplify(world, self.plan.simplify, simplify_boundary=True)
        for begin in range(0, len(codes), WRITE_BATCH):
            chunk = slice(begin, begin + WRITE_BATCH)
            self._write(codes[chunk], world[chunk])

    def _write(self, codes: np.ndarray, geoms: np.ndarray) -> None:
        """One batch of features; ``geoms`` is emptied.

        The GEOS objects go once their WKB is made: a region with a million holes is then not
        held as GEOS, WKB and OGR's own copy at once (fragmented 10240² map: 1.86 → 1.74 GB).
        """
        import shapely
        from pyogrio.raw import write

        area, perimeter = self.measure(geoms)
        self._check_shapefile_size(len(codes), geoms)
        wkb = shapely.to_wkb(geoms)
        geoms[:] = None
        present, where = np.unique(codes, return_inverse=True)
        names = self.plan.names
        labels = np.asarray([names.get(int(c), f"class {c}") for c in present], object)
        fields = {
            "class_id": codes.astype(np.int32),
            "class": labels[where],
            "area_m2": np.round(area, 3),
            "perim_m": np.round(perimeter, 3),
        }
        first = self.written.features == 0
        created = CREATION_OPTIONS.get(self.options["driver"], {}) if first else {}
        write(
            self.path, wkb, list(fields.values()), list(fields), geometry_type="Polygon",
            crs=self.crs, append=not first, **self.options, **created,
        )  # fmt: skip
        batch = Written()
        for code, n, total in zip(present, np.bincount(where), np.bincount(where, weights=area)):
            batch.counts[int(code)] = int(n)
            batch.areas[int(code)] = float(total)
        self.written.add(batch)

    def append(self, part: Path, written: Written) -> None:
        """Append a part's features (a file with this writer's fields), as they are."""
        import pyogrio

        first = self.written.features == 0
        created = CREATION_OPTIONS.get(self.options["driver"], {}) if first else {}
        with pyogrio.open_arrow(part) as (meta, reader):
            pyogrio.write_arrow(
                reader, self.path, geometry_name=meta["geometry_name"], geometry_type="Polygon",
                crs=meta["crs"], append=not first, **self.options, **created,
            )  # fmt: skip
        self.written.add(written)
        if self.options["driver"] == "ESRI Shapefile":
            self.shapefile_bytes += part.stat().st_size  # about a shapefile's: WKB + attributes
            self._check_shapefile_size(0, np.empty(0, object))

    def _check_shapefile_size(self, features: int, geoms: np.ndarray) -> None:
        import shapely

        if self.options["driver"] != "ESRI Shapefile" or self.shapefile_bytes > SHAPEFILE_LIMIT:
            return
        coordinates = int(shapely.get_num_coordinates(geoms).sum()) if features else 0
        self.shapefile_bytes += coordinates * 16 + 56 * features
        if self.shapefile_bytes > SHAPEFILE_LIMIT:
            self.reporter.log(
                "the shapefile passes 2 GB, more than the format can hold: "
                "write a GeoPackage (.gpkg) instead",
                "warning",
            )


def polygonize_rows(
    plan: VectorizePlan, rows: tuple[int, int] | None, output: str, reporter: Reporter | None = None
) -> tuple[Written, Batch]:
    """The task: the regions of ``rows`` (None: all) into ``output``.

    Those touching the range's top or bottom edge may continue beyond it: they are handed back
    (pixel coordinates) instead, for the assembly to join.
    """
    reporter = reporter or Reporter()
    Path(output).unlink(missing_ok=True)  # a task rerun after its worker died starts afresh
    with open_class_raster(Path(plan.source)) as src:
        rows = rows or (0, src.height)
        writer = _Writer(Path(output), plan, src, reporter)
        merger = RegionMerger(src.height, top=rows[0], transform=src.transform)
        selected = None if plan.selected is None else np.asarray(plan.selected)
        for batch in polygonize(src, selected, reporter, merger, rows):
            writer.add(*batch)
            del batch  # only the writer holds it now
        writer.flush()
        return writer.written, merger.open_regions()


def _on_dask(
    plan: VectorizePlan, final: Path, params: VectorizeParams, reporter: Reporter
) -> Written:
    """The tasks on Dask, each into a part; the regions at their edges joined; parts appended."""
    from segment_plugin.engine import scaleout

    with ExitStack() as stack:
        src = stack.enter_context(open_class_raster(Path(plan.source)))
        client = stack.enter_context(scaleout.dask_client(params.scheduler, params.workers))
        folder = scaleout.parts_folder(stack, final)
        workers = scaleout.check_workers(client, plan.source, folder)
        ranges = _row_ranges(src.height, src.width, workers * scaleout.TASKS_PER_WORKER)
        where = f"{workers} workers ({params.scheduler})"
        reporter.log(f"Dask: {len(ranges)} ranges of rows on {where}")
        parts = [folder / f"{k:04d}.gpkg" for k in range(len(ranges))]
        futures = [
            client.submit(polygonize_rows, plan, rows, str(part), pure=False)
            for rows, part in zip(ranges, parts)
        ]
        sizes = [end - first for first, end in ranges]
        writer = _Writer(final, plan, src, reporter)

        def append(index: int, result: tuple[Written, Batch]) -> None:
            if result[0].features:  # while the other tasks run
                writer.append(parts[index], result[0])

        results = scaleout.gather(
            client, futures, sizes, "rows", ScaledReporter(reporter, 0, 0.9), append
        )
        merger = RegionMerger(src.height, transform=src.transform)
        for k, ((first, end), (_, edges)) in enumerate(zip(ranges, results)):
            reporter.cancel.check()
            for batch in merger.add(first, end, *edges):
                writer.add(*batch)
            reporter.progress(0.9 + 0.1 * (k + 1) / len(ranges), "joining the ranges' edges")
        writer.flush()
        return writer.written


def _row_ranges(height: int, width: int, count: int) -> list[tuple[int, int]]:
    """``count`` (or fewer) ranges of whole strips covering the rows."""
    strips = math.ceil(height / strip_rows_for(width))
    per_range = math.ceil(strips / min(count, strips)) * strip_rows_for(width)
    return [(row, min(row + per_range, height)) for row in range(0, height, per_range)]


def _plan(params: VectorizeParams, src: Any, stack: ExitStack, reporter: Reporter) -> VectorizePlan:
    """Check the request against the raster; clean a copy first if asked."""
    names = class_names(src)
    if params.classes:
        unknown = [c for c in params.classes if names and c not in names]
        if unknown:
            known = ", ".join(f"{code} {name}" for code, name in sorted(names.items()))
            raise InputError(f"unknown class id(s) {unknown}; this raster has {known}")
    if params.simplify and params.scheduler:
        raise InputError(
            "--simplify keeps the topology of the whole coverage at once, so it runs in one "
            "process: leave out --scheduler (or simplify the result afterwards)"
        )
    if src.crs is None:
        reporter.log("the raster has no CRS: areas and lengths are in pixel units", "warning")
    source = params.input
    if params.smooth or params.min_area:
        source = outputs.temporary_sibling(params.output.with_suffix(".tif"))
        stack.callback(source.unlink, missing_ok=True)
        _cleaned_copy(src, params, source, reporter)
    return VectorizePlan(
        source=str(source),
        selected=params.classes or None,
        names=names,
        layer=params.layer or params.output.stem,
        simplify=params.simplify / _metres_per_map_unit(src) if params.simplify else None,
    )


def vectorize(params: VectorizeParams, reporter: Reporter | None = None) -> dict[str, Any]:
    """Write one polygon per connected class region of ``params.input`` to ``params.output``."""
    reporter = reporter or Reporter()
    started = time.monotonic()
    with ExitStack() as stack:
        src = stack.enter_context(open_class_raster(params.input))
        outputs.check_output_path(params.output, params.input, params.overwrite)
        final = stack.enter_context(outputs.committed([params.output]))[0]
        plan = _plan(params, src, stack, reporter)
        if params.scheduler:
            written = _on_dask(plan, final, params, reporter)
        else:
            written, _ = polygonize_rows(plan, None, str(final), reporter)
        if written.features == 0:
            what = f"of class(es) {list(params.classes)}" if params.classes else "with a class"
            raise InputError(f"{params.input} has no pixels {what}: nothing to vectorise")
    elapsed = time.monotonic() - started
    reporter.progress(1.0, "done")
    names = plan.names
    return {
        "output": str(params.output),
        "layer": _writer_options(params.output, plan.layer).get("layer"),
        "features": written.features,
        "classes": {
            names.get(code, f"class {code}"): {
                "class_id": code,
                "features": written.counts[code],
                "area_m2": round(written.areas[code], 3),
            }
            for code in sorted(written.counts)
        },
        "seconds": round(elapsed, 3),
        "params": json.loads(params.to_json()),
    }
