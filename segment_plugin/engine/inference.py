"""Tiled, blended, streaming inference: a raster of any size in, a class raster out.

Three threads form a pipeline so the model never waits for I/O: a reader reads and normalises
tiles (windowed reads at the model's resolution), the calling thread runs the model on batches
and blends probabilities into a :class:`~segment_plugin.engine.tiling.RollingAccumulator`, and a
writer turns finished rows into class codes and writes them. Memory is bounded by a couple of tile
rows whatever the raster's size. When the model works at another ground resolution than the
input, the pipeline runs on a resampled "working" grid and a last pass writes the result back
on the input's grid.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segment_plugin.engine import outputs, raster_io
from segment_plugin.engine.devices import GPU, select_device
from segment_plugin.engine.errors import InputError
from segment_plugin.engine.models.onnx_model import OnnxModel
from segment_plugin.engine.models.package import IGNORE_CODE, ModelCard, ModelPackage
from segment_plugin.engine.models.registry import resolve_model
from segment_plugin.engine.normalize import Normalizer, raster_stats
from segment_plugin.engine.params import SegmentParams
from segment_plugin.engine.progress import CancelToken, Reporter, ScaledReporter
from segment_plugin.engine.styling import write_class_sidecars
from segment_plugin.engine.tiling import (
    RollingAccumulator,
    TileGrid,
    blend_window,
    default_batch,
    default_overlap,
    fitted_tile,
    pad_to_tile,
)

QUEUE_DEPTH = 3  # batches read ahead / row blocks waiting to be written
_DONE = object()


@dataclass(frozen=True)
class WorkingGrid:
    """The grid the model runs on: the input's, or the input resampled to the model's GSD."""

    height: int
    width: int
    fy: float  # working pixels per input pixel, vertically
    fx: float

    @property
    def resampled(self) -> bool:
        """Whether a final pass back to the input grid is needed."""
        return (self.fy, self.fx) != (1.0, 1.0)

    def input_window(self, row: float, col: float, height: float, width: float) -> Any:
        """The input-grid window under a working-grid window."""
        from rasterio.windows import Window

        return Window(col / self.fx, row / self.fy, width / self.fx, height / self.fy)


#: an explicit --resolution may resample an input at most this much finer (per axis)
MAX_EXPLICIT_UPSAMPLE = 16.0
#: share of the machine's memory the tiles and blended probabilities may take
MEMORY_SHARE = 0.5


def check_memory(width: int, tile: int, overlap: int, classes: int, bands: int, batch: int) -> None:
    """Refuse, with the numbers, a tile or batch whose buffers would not fit in memory.

    What grows with them: the rolling accumulator (tile + stride rows of the working grid's width,
    float32 per class plus a weight) and a batch of tiles (input bands, probabilities, blending).
    The model's own activations come on top.
    """
    rows = 2 * tile - overlap
    need = rows * width * (classes + 1) * 4 + batch * tile * tile * (bands + 2 * classes) * 4
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > MEMORY_SHARE * total:
        raise InputError(
            f"tile {tile} with batch {batch} on a {width:,}-pixel-wide grid would hold about "
            f"{need / 2**30:,.1f} GB of tiles and blended probabilities, more than half of this "
            f"machine's {total / 2**30:.0f} GB: lower --batch, then --tile"
        )


def working_grid(
    dataset: Any, card: ModelCard, resolution: float | None, reporter: Reporter
) -> WorkingGrid:
    """Decide the working resolution: ``--resolution``, else the model's, else the input's."""
    target = resolution if resolution is not None else card.resolution_m
    same = WorkingGrid(dataset.height, dataset.width, 1.0, 1.0)
    if target is None:
        return same
    size = raster_io.pixel_size_m(dataset)
    if size is None:
        reporter.log(
            "the input has no CRS: its pixel size is unknown, so it is not resampled", "warning"
        )
        return same
    if resolution is None:  # the model's own resolution: not beyond MAX_UPSAMPLE
        target = raster_io.model_resolution_for(max(size), target)
    factor_x, factor_y = size[0] / target, size[1] / target
    if max(factor_x, factor_y) > MAX_EXPLICIT_UPSAMPLE:
        raise InputError(
            f"--resolution {target:g} m on {min(size):.3g} m pixels would segment a grid "
            f"{max(factor_x, factor_y):.0f}× finer ({dataset.width * factor_x:,.0f} × "
            f"{dataset.height * factor_y:,.0f} pixels); at most {MAX_EXPLICIT_UPSAMPLE:g}× "
            "finer than the input is accepted: finer pixels add no detail, only time and disk"
        )
    if (
        abs(factor_x - 1) <= raster_io.RESAMPLE_TOLERANCE
        and abs(factor_y - 1) <= raster_io.RESAMPLE_TOLERANCE
    ):
        return same
    height = max(raster_io.MIN_SIZE, round(dataset.height * factor_y))
    width = max(raster_io.MIN_SIZE, round(dataset.width * factor_x))
    reporter.log(
        f"input pixels are {size[0]:.3g}×{size[1]:.3g} m, the model works at {target:g} m: "
        f"segmenting a {width}×{height} resampled grid, written back on the input grid"
    )
    return WorkingGrid(height, width, height / dataset.height, width / dataset.width)


def mixed_precision_copy(model: Any) -> Any:
    """The model rebuilt to compute in float16 (weights kept), its softmax head in float32.

    On GPUs with tensor cores this roughly doubles throughput; probabilities stay float32.
    """
    import keras

    head = model.layers[-1].name

    def rebuild(layer: Any) -> Any:
        config = layer.get_config()
        config["dtype"] = "float32" if layer.name == head else "mixed_float16"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=rebuild)
    copy.set_weights(model.get_weights())
    return copy


def predict_tiles(model: Any, batch: np.ndarray, tta: bool = False) -> np.ndarray:
    """Model output (n, h, w, classes) for tiles (n, h, w, bands).

    ``tta``: the mean over the tiles and their three flips (each flipped back), one model call.
    """
    if not tta:
        return np.asarray(model.predict_on_batch(batch))
    variants = [batch, batch[:, :, ::-1], batch[:, ::-1, :], batch[:, ::-1, ::-1]]
    out = np.asarray(model.predict_on_batch(np.concatenate(variants)))
    n = len(batch)
    parts = [out[i * n : (i + 1) * n] for i in range(4)]
    parts = [parts[0], parts[1][:, :, ::-1], parts[2][:, ::-1, :], parts[3][:, ::-1, ::-1]]
    return np.mean(parts, axis=0)


def undo_class_weights(
    probs: np.ndarray,
    weights: Sequence[float] | None,
    out: np.ndarray | None = None,
    renormalise: bool = True,
) -> np.ndarray:
    """Probabilities (..., classes) without the bias of the class weights a model was trained with.

    A cross-entropy whose class c weighs w_c is minimised by outputs proportional to w_c·p(c),
    so a model trained with median-frequency weights (background 0.19, road 1.24 for the bundled
    one) calls too little background and too much road. Dividing by w_c and renormalising gives
    p(c) back. Measured on the bundled model's first stage: Dubai tile 8 mIoU 0.678 → 0.694, its
    own training tiles 0.688 → 0.723; partial corrections (w_c to a power below 1) scored lower
    on the training tiles. ``None`` (trained without weights): unchanged. Applied to blended
    rows, as to a single pass's output, not to each tile: renormalising each tile would reweigh
    the overlapping tiles against each other. ``out=probs`` corrects in place: the blended rows
    are as wide as the raster, and a copy of them is memory that grows with it.
    ``renormalise=False`` skips the renormalisation where only the class (the argmax) is
    wanted: it divides each pixel by a positive number, which leaves the argmax as it is. On a
    5000 × 5000 segment run, skipping it took the writer thread from 90 to 58 py-spy samples
    (50 Hz; this function 44 → 8), with an identical class raster.
    """
    if weights is None:
        return probs
    out = np.divide(probs, np.asarray(weights, probs.dtype), out=out)
    if renormalise:
        out /= out.sum(axis=-1, keepdims=True)
    return out


def load_for_inference(
    package: ModelPackage, runtime: str, device: str, reporter: Reporter
) -> tuple[Any, str]:
    """The package's model on the chosen runtime and device, and the device's name."""
    runtime = package.runtime(runtime)
    if runtime == "onnx":
        model = package.load_model("onnx", device)
        reporter.log(f"runtime: ONNX Runtime ({model.session.get_providers()[0]})")
        return model, model.device
    model = package.load_model("keras")  # first: in an inference-only engine, says so
    device = select_device(device)
    if device == GPU:
        model = mixed_precision_copy(model)
        reporter.log("GPU: running the model in mixed precision (float16, float32 output)")
    return model, device


class Predictor:
    """Runs the model on batches of normalised tiles; optional flip test-time augmentation."""

    def __init__(self, model: Any, device: str, tta: bool, reporter: Reporter) -> None:
        self.model = model
        self.device = device
        self.tta = tta
        self.reporter = reporter
        self._checked = False
        self._softmax = False

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities (n, h, w, classes) for a batch (n, h, w, bands)."""
        with self._device_scope():
            probs = predict_tiles(self.model, batch, self.tta)
        return self._as_probabilities(probs.astype(np.float32, copy=False))

    def _device_scope(self) -> Any:
        if isinstance(self.model, OnnxModel):  # its session was made for its device
            return nullcontext()
        import keras

        return keras.device(self.device)

    def _as_probabilities(self, out: np.ndarray) -> np.ndarray:
        if not self._checked:
            self._checked = True
            sums = out.sum(axis=-1)
            if out.min() < -1e-3 or not np.allclose(sums, 1.0, atol=1e-2):
                self._softmax = True
                self.reporter.log("the model outputs logits: applying softmax", "warning")
        if self._softmax:
            out = np.exp(out - out.max(axis=-1, keepdims=True))
            out /= out.sum(axis=-1, keepdims=True)
        return out


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.2)
            return
        except queue.Full:
            continue


class _Worker(threading.Thread):
    """A pipeline thread that keeps its exception for the main thread to re-raise."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._work = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._work()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self.error = exc


def valid_pixels(src: Any, bands: Sequence[int], window: Any, shape: tuple[int, int]) -> np.ndarray:
    """Pixels to classify: GDAL's dataset mask, and for float rasters finite values only.

    NaN and ±inf are no data in practice (a nodata value GDAL does not know about), and one inf
    would break the whole-raster statistics.
    """
    from rasterio.enums import Resampling

    valid = src.dataset_mask(window=window, out_shape=shape) > 0
    if np.issubdtype(np.dtype(src.dtypes[0]), np.floating):
        values = src.read(
            list(bands),
            window=window,
            out_shape=(len(bands), *shape),
            resampling=Resampling.nearest,
        )
        valid &= np.isfinite(values).all(axis=0)
    return valid


class _Pipeline:
    """Reader thread → model (calling thread) → writer thread, for rows of one working grid.

    ``rows`` (first, last): the strip of the working grid this run writes, into a raster of
    that strip's height (a part); it reads only the tile rows that cover it. Default: all.
    """

    def __init__(
        self,
        src_path: str,
        bands: tuple[int, ...],
        grid: TileGrid,
        wgrid: WorkingGrid,
        normalizer: Normalizer,
        batch: int,
        class_weights: Sequence[float] | None,
        rows: tuple[int, int] | None = None,
    ) -> None:
        self.rows = rows or (0, grid.height)
        self.tile_rows = grid.tile_rows_for(*self.rows)
        self.src_path = src_path
        self.bands = list(bands)
        self.grid = grid
        self.wgrid = wgrid
        self.normalizer = normalizer
        self.batch = batch
        self.class_weights = class_weights  # undone on blended rows, see undo_class_weights
        self.codes = np.asarray(normalizer.card.class_codes, np.uint8)

    # -- reader thread ---------------------------------------------------------------------
    def _read_tile(self, src: Any, row: int, col: int) -> np.ndarray:
        from rasterio.enums import Resampling

        tile = self.grid.tile
        h = min(tile, self.grid.height - row)
        w = min(tile, self.grid.width - col)
        downsample = self.wgrid.fx < 1 or self.wgrid.fy < 1
        data = src.read(
            self.bands,
            window=self.wgrid.input_window(row, col, h, w),
            out_shape=(len(self.bands), h, w),
            resampling=Resampling.average if downsample else Resampling.bilinear,
            masked=True,
        )
        missing = np.ma.getmaskarray(data) | ~np.isfinite(data.data)  # NaN, ±inf: no data
        values = np.where(missing, self.normalizer.fill_value(), data.data)
        return self.normalizer(pad_to_tile(values, tile))

    def _reader(self, out: queue.Queue, stop: threading.Event) -> None:
        import rasterio

        with rasterio.open(self.src_path) as src:
            where: list[tuple[int, int]] = []
            tiles: list[np.ndarray] = []
            for row in (self.grid.rows[i] for i in self.tile_rows):
                for col in self.grid.cols:
                    if stop.is_set():
                        return
                    tiles.append(self._read_tile(src, row, col))
                    where.append((row, col))
                    if len(tiles) == self.batch:
                        _put(out, (where, np.stack(tiles)), stop)
                        where, tiles = [], []
            if tiles:
                _put(out, (where, np.stack(tiles)), stop)
        _put(out, _DONE, stop)

    # -- writer thread ---------------------------------------------------------------------
    def _writer(
        self,
        rows_in: queue.Queue,
        stop: threading.Event,
        paths: list[Path],
        profile: dict[str, Any],
        counts: np.ndarray,
    ) -> None:
        import rasterio
        from rasterio.windows import Window

        width = self.grid.width
        with rasterio.open(self.src_path) as src, ExitStack() as opened:
            classes_dst, probs_dst = create_outputs(opened, paths, profile, self.normalizer.card)
            while not stop.is_set():
                try:
                    item = rows_in.get(timeout=0.2)
                except queue.Empty:
                    continue
                if item is _DONE:
                    return
                start, probs = self._within_strip(*item)
                if not len(probs):
                    continue
                probs = undo_class_weights(  # in place: these rows are ours alone
                    probs, self.class_weights, out=probs, renormalise=probs_dst is not None
                )
                n = probs.shape[0]
                under = self.wgrid.input_window(start, 0, n, width)
                valid = valid_pixels(src, self.bands, under, (n, width))
                classes = self.codes[probs.argmax(axis=-1)]
                classes[~valid] = IGNORE_CODE
                counts += _count_codes(classes, self.codes)
                window = Window(0, start - self.rows[0], width, n)
                classes_dst.write(classes, 1, window=window)
                if probs_dst is not None:
                    scaled = raster_io.as_uint8_probabilities(probs)
                    scaled[~valid] = 0
                    probs_dst.write(np.moveaxis(scaled, -1, 0), window=window)

    def _within_strip(self, start: int, probs: np.ndarray) -> tuple[int, np.ndarray]:
        """The rows of a finished block that belong to this strip (the others are incomplete)."""
        first, last = max(start, self.rows[0]), min(start + len(probs), self.rows[1])
        return first, probs[max(0, first - start) : max(0, last - start)]

    # -- the calling thread ----------------------------------------------------------------
    def run(
        self,
        predict: Predictor,
        paths: list[Path],
        profile: dict[str, Any],
        reporter: Reporter,
    ) -> np.ndarray:
        """Run the pipeline; returns pixel counts per class (card order)."""
        tiles_in: queue.Queue = queue.Queue(QUEUE_DEPTH)
        rows_out: queue.Queue = queue.Queue(QUEUE_DEPTH)
        stop = threading.Event()
        counts = np.zeros(len(self.codes), np.int64)
        reader = _Worker(lambda: self._reader(tiles_in, stop), "segment-reader")
        writer = _Worker(
            lambda: self._writer(rows_out, stop, paths, profile, counts), "segment-writer"
        )
        reader.start()
        writer.start()
        try:
            with reporter.cancel.checkpoints():
                self._loop(predict, tiles_in, rows_out, stop, (reader, writer), reporter)
            _put(rows_out, _DONE, stop)
            while writer.is_alive():
                writer.join(0.2)
        finally:
            stop.set()
            reader.join(10)
            writer.join(10)
        for worker in (reader, writer):
            if worker.error is not None:
                raise worker.error
        return counts

    def _loop(
        self,
        predict: Predictor,
        tiles_in: queue.Queue,
        rows_out: queue.Queue,
        stop: threading.Event,
        workers: tuple[_Worker, _Worker],
        reporter: Reporter,
    ) -> None:
        """Model calls and blending; the cancel token is checked between batches."""
        grid = self.grid
        accumulator = RollingAccumulator(
            grid, len(self.codes), blend_window(grid.tile), first_tile_row=self.tile_rows[0]
        )
        count = len(self.tile_rows) * len(grid.cols)
        done = 0
        started = time.monotonic()
        while True:
            reporter.cancel.check()
            item = _get(tiles_in, workers)
            if item is _DONE:
                _put(rows_out, accumulator.finish(), stop)
                return
            where, batch = item
            probs = predict(batch)
            for (row, col), tile_probs in zip(where, probs):
                for finished in accumulator.add_in_order(row, col, tile_probs):
                    _put(rows_out, finished, stop)
            done += len(where)
            elapsed = time.monotonic() - started
            rate = done / elapsed if elapsed > 0 else 0.0
            reporter.progress(
                done / count,
                f"{done}/{count} tiles",
                tiles_per_s=round(rate, 2),
                eta_s=round((count - done) / rate, 1) if rate else None,
            )


def predict_array(
    model: Any,
    normalizer: Normalizer,
    image: np.ndarray,
    tile: int,
    overlap: int,
    batch: int | None = None,
    tta: bool = False,
    class_weights: Sequence[float] | None = None,
    cancel: CancelToken | None = None,
) -> np.ndarray:
    """Channel indices (h, w) for an in-memory image (bands, h, w).

    The same tiling, batches, blending, test-time augmentation and class-weight correction as
    :func:`segment`, for evaluation and validation. ``cancel`` is checked between batches.
    """
    batch = batch or default_batch(tile)
    height, width = image.shape[1:]
    grid = TileGrid(height, width, tile, overlap)
    classes = model.outputs[0].shape[-1]
    accumulator = RollingAccumulator(grid, classes, blend_window(tile))
    out = np.empty((height, width), np.uint8)

    def put(first: int, rows: np.ndarray) -> None:
        rows = undo_class_weights(rows, class_weights, out=rows, renormalise=False)
        out[first : first + rows.shape[0]] = rows.argmax(-1)

    tiles = []
    for row in grid.rows:
        for col in grid.cols:
            values = pad_to_tile(image[:, row : row + tile, col : col + tile], tile)
            tiles.append((row, col, normalizer(values)))
    for start in range(0, len(tiles), batch):
        if cancel is not None:
            cancel.check()
        chunk = tiles[start : start + batch]
        probs = predict_tiles(model, np.stack([t[2] for t in chunk]), tta)
        for (row, col, _), tile_probs in zip(chunk, probs):
            for first, rows in accumulator.add_in_order(row, col, tile_probs):
                put(first, rows)
    put(*accumulator.finish())
    return out


def _get(q: queue.Queue, workers: tuple[_Worker, ...]) -> Any:
    """Next item; re-raise a worker's error instead of waiting forever for it."""
    while True:
        try:
            return q.get(timeout=0.2)
        except queue.Empty:
            for worker in workers:
                if worker.error is not None:
                    raise worker.error from None
                if not worker.is_alive() and worker.name.endswith("reader") and q.empty():
                    raise RuntimeError("the tile reader stopped without finishing") from None


def _count_codes(classes: np.ndarray, codes: np.ndarray) -> np.ndarray:
    return np.bincount(classes.ravel(), minlength=256)[codes]


def create_outputs(
    stack: ExitStack, paths: list[Path], profile: dict[str, Any], card: ModelCard
) -> tuple[Any, Any]:
    """Open the class raster (and the probabilities raster) for writing, fully described."""
    import rasterio

    classes_dst = stack.enter_context(
        rasterio.open(paths[0], "w", **raster_io.output_profile(profile, 1, IGNORE_CODE))
    )
    raster_io.describe_classes(classes_dst, card.classes, card.name)
    probs_dst = None
    if len(paths) > 1:
        probs_dst = stack.enter_context(
            rasterio.open(
                paths[1], "w", **raster_io.output_profile(profile, len(card.classes), None)
            )
        )
        for index, info in enumerate(card.classes, start=1):
            probs_dst.set_band_description(index, f"p({info.name}) × 255")
    return classes_dst, probs_dst


def _to_input_grid(
    src: Any,
    bands: Sequence[int],
    working: list[Path],
    finals: list[Path],
    wgrid: WorkingGrid,
    card: ModelCard,
) -> np.ndarray:
    """Write the working-grid results back on the input grid (nearest), block row by block row."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    codes = np.asarray(card.class_codes, np.uint8)
    counts = np.zeros(len(codes), np.int64)
    with ExitStack() as stack:
        sources = [stack.enter_context(rasterio.open(p)) for p in working]
        classes_dst, probs_dst = create_outputs(stack, finals, src.profile, card)
        for row in range(0, src.height, raster_io.OUTPUT_BLOCK):
            n = min(raster_io.OUTPUT_BLOCK, src.height - row)
            window = Window(0, row, src.width, n)
            under = Window(0, row * wgrid.fy, wgrid.width, n * wgrid.fy)
            valid = valid_pixels(src, bands, window, (n, src.width))
            classes = sources[0].read(
                1, window=under, out_shape=(n, src.width), resampling=Resampling.nearest
            )
            classes[~valid] = IGNORE_CODE
            counts += _count_codes(classes, codes)
            classes_dst.write(classes, 1, window=window)
            if probs_dst is not None:
                probs = sources[1].read(
                    window=under,
                    out_shape=(sources[1].count, n, src.width),
                    resampling=Resampling.nearest,
                )
                probs[:, ~valid] = 0
                probs_dst.write(probs, window=window)
    return counts


@dataclass(frozen=True)
class SegmentJob:
    """One segment job's plan: what each of its strip tasks needs, decided once.

    Picklable, so that Dask ships it to workers: the input, the model package and how to run
    it, the working and tile grids, the whole-raster statistics (a strip must normalise as the
    whole raster does) and the working grid's raster profile.
    """

    input: str
    model: str
    runtime: str
    device: str
    bands: tuple[int, ...]
    grid: TileGrid
    wgrid: WorkingGrid
    stats: Any
    dtype: str
    batch: int
    tta: bool
    class_weights: tuple[float, ...] | None
    profile: dict[str, Any]

    def part_profile(self, rows: tuple[int, int]) -> dict[str, Any]:
        """The profile of a raster holding only working-grid rows ``rows``."""
        from rasterio.transform import Affine

        transform = self.profile["transform"] @ Affine.translation(0, rows[0])
        return {**self.profile, "height": rows[1] - rows[0], "transform": transform}


@functools.lru_cache(maxsize=2)
def _worker_model(model: str, runtime: str, device: str) -> tuple[Any, str]:
    """A Dask worker process loads each model once, not once per task."""
    return load_for_inference(ModelPackage.open(model), runtime, device, Reporter())


def run_strip(
    job: SegmentJob,
    rows: tuple[int, int],
    paths: list[Path],
    reporter: Reporter | None = None,
    loaded: tuple[Any, str] | None = None,
) -> np.ndarray:
    """One task: working-grid rows ``rows`` of ``job`` into ``paths``; its class pixel counts.

    The rasters at ``paths`` are as high as the strip. ``reporter``: none on a Dask worker
    (the client reports progress). ``loaded``: the (model, device) to use instead of loading it
    (a single-process run has it already).
    """
    reporter = reporter or Reporter()
    card = ModelPackage.open(job.model).card
    model, device = loaded or _worker_model(job.model, job.runtime, job.device)
    _check_tile(model, card, job.grid.tile)
    normalizer = Normalizer(card, job.stats, job.dtype)
    pipeline = _Pipeline(
        job.input, job.bands, job.grid, job.wgrid, normalizer, job.batch, job.class_weights, rows
    )
    predictor = Predictor(model, device, job.tta, reporter)
    return pipeline.run(predictor, paths, job.part_profile(rows), reporter)


def plan_segment(
    params: SegmentParams, src: Any, package: ModelPackage, reporter: Reporter
) -> SegmentJob:
    """One raster's plan: bands, working and tile grids, whole-raster statistics.

    Checked before any model work (the statistics pass and a model load both take time); the
    model itself is loaded by whoever runs the tasks.
    """
    card = package.card
    bands = raster_io.resolve_bands(src, card, params.bands)
    if src.crs is None:
        reporter.log("the input has no CRS: the output is on its pixel grid", "warning")
    wgrid = working_grid(src, card, params.resolution, reporter)
    tile = params.tile or card.tile_size
    overlap = params.overlap if params.overlap is not None else default_overlap(tile)
    if overlap >= tile:
        raise InputError(f"overlap ({overlap}) must be smaller than the tile ({tile})")
    if tile % card.input_multiple:
        raise InputError(
            f"model {card.name!r} needs tile sizes that are multiples of "
            f"{card.input_multiple}, not {tile}"
        )
    fitted = fitted_tile(tile, wgrid.height, wgrid.width, card.input_multiple)
    if fitted < tile:  # one tile holds the whole grid: its overlap is moot
        tile, overlap = fitted, min(overlap, fitted // 2)
    batch = params.batch or default_batch(tile)
    check_memory(wgrid.width, tile, overlap, len(card.classes), len(bands), batch)
    norm = card.normalization
    stats = raster_stats(src, bands, norm.low, norm.high)
    warning = Normalizer(card, stats, src.dtypes[bands[0] - 1]).warning
    if warning:
        reporter.log(warning, "warning")
    grid = TileGrid(wgrid.height, wgrid.width, tile, overlap)
    reporter.log(
        f"model {card.name}: bands {list(bands)}, {grid.count} tiles of {tile} px, "
        f"overlap {overlap}"
    )
    profile = dict(src.profile)
    if wgrid.resampled:
        from rasterio.transform import Affine

        profile.update(
            height=wgrid.height,
            width=wgrid.width,
            transform=src.transform @ Affine.scale(1 / wgrid.fx, 1 / wgrid.fy),
        )
    return SegmentJob(
        input=src.name,
        model=str(package.path),
        runtime=params.runtime,
        device=params.device,
        bands=tuple(bands),
        grid=grid,
        wgrid=wgrid,
        stats=stats,
        dtype=src.dtypes[bands[0] - 1],
        batch=batch,
        tta=params.tta,
        class_weights=None if params.keep_class_weights else card.class_weights,
        profile=profile,
    )


def _space_needed(
    params: SegmentParams, src: Any, job: SegmentJob, classes: int
) -> list[outputs.SpaceNeed]:
    """The rasters on disk at the end of the run, temporaries included.

    Beside the finals: the working-grid rasters when resampling, the tasks' parts on Dask.
    """
    pixels = src.width * src.height
    working = job.wgrid.width * job.wgrid.height
    pixels += working * (job.wgrid.resampled + (params.scheduler is not None))
    needs = [outputs.SpaceNeed(params.output, "class raster", pixels, outputs.CLASS_RATIOS)]
    if params.probabilities:
        needs.append(
            outputs.SpaceNeed(
                params.probabilities, "probabilities", pixels * classes, outputs.PROBABILITY_RATIOS
            )
        )
    return needs


def _check_tile(model: Any, card: ModelCard, tile: int) -> None:
    """A model built for one tile size takes no other."""
    fixed = model.inputs[0].shape[1]
    if fixed is not None and fixed != tile:
        raise InputError(f"model {card.name!r} only takes {fixed}×{fixed} tiles, not {tile}")


def segment(params: SegmentParams, reporter: Reporter | None = None) -> dict[str, Any]:
    """Segment ``params.input`` into ``params.output`` (and optional probabilities, polygons)."""
    reporter = reporter or Reporter()
    if params.vector is None:
        return _segment(params, reporter)
    from segment_plugin.engine.params import VectorizeParams
    from segment_plugin.engine.vectorize import vectorize

    outputs.check_output_path(params.vector, params.input, params.overwrite)
    result = _segment(params, ScaledReporter(reporter, 0.0, 0.85))
    vector = VectorizeParams(
        params.output, params.vector, scheduler=params.scheduler, workers=params.workers,
        overwrite=params.overwrite,
    )  # fmt: skip
    result["vector"] = vectorize(vector, ScaledReporter(reporter, 0.85, 1.0))
    return result


def _segment(params: SegmentParams, reporter: Reporter) -> dict[str, Any]:
    started = time.monotonic()
    package: ModelPackage = resolve_model(params.model)
    card = package.card
    targets = [params.output] + ([params.probabilities] if params.probabilities else [])
    if params.probabilities and params.probabilities.resolve() == params.output.resolve():
        raise InputError("the probabilities raster must be another file than the class raster")
    with ExitStack() as stack:
        src = stack.enter_context(raster_io.open_input(params.input))
        for path in targets:
            outputs.check_output_path(path, params.input, params.overwrite)
        job = plan_segment(params, src, package, reporter)
        bands, grid, wgrid = job.bands, job.grid, job.wgrid
        outputs.check_free_space(
            _space_needed(params, src, job, len(card.classes)),
            lambda message: reporter.log(message, "warning"),
        )
        finals = stack.enter_context(outputs.committed(targets))
        working = finals
        if wgrid.resampled:
            working = [outputs.temporary_sibling(p) for p in targets]
            stack.callback(lambda: [w.unlink(missing_ok=True) for w in working])
        if params.scheduler is None:  # the same plan as one task, in this process
            model, device = load_for_inference(package, params.runtime, params.device, reporter)
            reporter.log(f"model {card.name} on {device.strip('/')}")
            counts = run_strip(job, (0, grid.height), working, reporter, (model, device))
        else:
            from segment_plugin.engine.scaleout import run_on_dask

            device = f"Dask workers ({params.device})"
            counts = run_on_dask(job, working, params.scheduler, params.workers, reporter)
        if wgrid.resampled:
            reporter.log("writing the result back on the input grid")
            counts = _to_input_grid(src, bands, working, finals, wgrid, card)
        # beside the temporary name: renamed with the raster, or removed with it on a failure
        write_class_sidecars(finals[0], card.classes)
        pixel = raster_io.pixel_size_m(src)
        megapixels = src.width * src.height / 1e6
    qml = params.output.with_suffix(".qml")
    elapsed = time.monotonic() - started
    class_pixels = {c.name: int(n) for c, n in zip(card.classes, counts)}
    areas = None
    if pixel is not None:
        areas = {name: round(n * pixel[0] * pixel[1], 2) for name, n in class_pixels.items()}
    reporter.progress(1.0, "done")
    return {
        "output": str(params.output),
        "probabilities": str(params.probabilities) if params.probabilities else None,
        "qml": str(qml),
        "model": card.name,
        "device": device,
        "bands": list(bands),
        "tiles": grid.count,
        "seconds": round(elapsed, 3),
        "mpx_per_s": round(megapixels / max(elapsed, 1e-9), 3),
        "class_pixels": class_pixels,
        "class_area_m2": areas,
        "params": json.loads(params.to_json()),
    }
