"""``segment-plugin evaluate``: a model against reference labels → mIoU, per-class IoU, matrix.

Either a folder of image/mask pairs (each image predicted with the same tiling and blending as
``segment``) or a raster + its reference class raster (segmented with ``segment`` into a
temporary file, then compared window by window). ``--report`` adds an HTML page with the
confusion matrix drawn as an SVG heat map (no plotting library needed).
"""

from __future__ import annotations

import html
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from segment_plugin.engine import outputs
from segment_plugin.engine.errors import InputError
from segment_plugin.engine.models.package import ModelPackage
from segment_plugin.engine.models.registry import resolve_model
from segment_plugin.engine.normalize import Normalizer, band_stats, without_stretch
from segment_plugin.engine.params import EvaluateParams, SegmentParams
from segment_plugin.engine.progress import Reporter
from segment_plugin.engine.tiling import default_overlap, fitted_tile
from segment_plugin.engine.training import metrics
from segment_plugin.engine.training.chips import code_lookup, pairs_folder


def _pairs_report(params: EvaluateParams, reporter: Reporter) -> tuple[dict[str, Any], str]:
    """The metrics of a pairs folder (only its labelled classes if it is partial), the model."""
    package = resolve_model(params.model)
    card = package.card
    scenes = pairs_folder(params.images, card.class_codes, len(card.bands), params.gsd)
    model = _load(package, params, reporter)
    return _scenes_report(package, model, scenes, params, reporter), card.name


def _load(package: ModelPackage, params: EvaluateParams, reporter: Reporter) -> Any:
    from segment_plugin.engine.inference import load_for_inference

    return load_for_inference(package, params.runtime, "auto", reporter)[0]


def _scenes_report(
    package: Any,
    model: Any,
    scenes: list,
    params: EvaluateParams,
    reporter: Reporter,
    stretched: bool = False,
    groups: list[str] | None = None,
) -> dict[str, Any]:
    """Metrics of labelled scenes predicted as segment would (partial: labelled classes only).

    Images of known resolution are segmented at the model's and the class map is written back
    on the image's own grid (nearest), as segment does, so that every model is scored against
    the same, unresampled labels. ``stretched``: the scenes are a stretching model's input
    already (stretched by their scene's statistics). ``groups``: the larger scene each image
    was cut from; each one's mIoU is added as ``per_scene``, so that a pooled score's worst
    places can be found and looked at.
    """
    from segment_plugin.engine.inference import predict_array
    from segment_plugin.engine.training.augment import resize_nearest

    card = without_stretch(package.card) if stretched else package.card
    if card.resolution_m and any(s.gsd is None for s in scenes):
        reporter.log(
            f"{card.name} works at {card.resolution_m} m but the images' resolution is unknown: "
            "they are evaluated at their own scale (give --gsd)",
            "warning",
        )
    tile = params.tile or card.tile_size
    matrix = np.zeros((len(card.classes) + 1, len(card.classes)), np.int64)
    by_group: dict[str, np.ndarray] = {}
    for k, native in enumerate(scenes):
        reporter.cancel.check()
        scene = native.at_resolution(card.resolution_m)
        norm = card.normalization
        pixels = scene.image.reshape(scene.image.shape[0], -1)
        stats = band_stats(pixels, norm.low, norm.high)  # the whole image, as segment does
        normalizer = Normalizer(card, stats, str(scene.image.dtype))
        # segment's tile for this grid: a small chip (a 300 px drone chip is 60 px at 0.5 m) is
        # one tile of at least MIN_TILE, reflect-padded, so that the model still has context
        size = fitted_tile(tile, *scene.labels.shape, card.input_multiple)
        predicted = predict_array(
            model,
            normalizer,
            scene.image,
            size,
            default_overlap(size),
            tta=params.tta,
            class_weights=None if params.keep_class_weights else card.class_weights,
        )
        predicted = resize_nearest(predicted, native.labels.shape)
        confusion = metrics.confusion_with_other(native.labels, predicted, len(card.classes))
        matrix += confusion
        if groups:
            by_group[groups[k]] = by_group.get(groups[k], 0) + confusion
        reporter.progress((k + 1) / len(scenes), f"{scene.name}")
    labelled = scenes[0].labelled if scenes else None
    names = [c.name for c in card.classes]
    result = metrics.report_with_other(matrix, names, labelled)
    if by_group:
        result["per_scene"] = {
            group: metrics.report_with_other(m, names, labelled)["miou"]
            for group, m in sorted(by_group.items())
        }
    return result


def _sources_result(params: EvaluateParams, reporter: Reporter) -> dict[str, Any]:
    """Each source's held-out images (its validation patterns), reported per source."""
    from segment_plugin.engine.training.chips import stretched_scenes
    from segment_plugin.engine.training.sources import held_out, read_sources, scene_groups

    package = resolve_model(params.model)
    card = package.card
    norm = card.normalization
    model = _load(package, params, reporter)
    per_source = {}
    for source in read_sources(params.sources, params.data_root):
        if not source.validation:
            continue
        held = held_out(source, card.class_codes, len(card.bands))
        reporter.log(f"{source.name}: {len(held)} held-out images")
        groups = scene_groups(held, [source])
        if norm.stretch:  # the images of one scene together, as training stretched them
            held = stretched_scenes(held, groups, norm)
        named = [g.split("/", 1)[-1] for g in groups] if source.scene else None
        per_source[source.name] = _scenes_report(
            package, model, held, params, reporter, norm.stretch, named
        )
    if not per_source:
        raise InputError(f"{params.sources}: no source holds images out (validation patterns)")
    scores = [r["miou"] for r in per_source.values() if r["miou"] is not None]
    return {
        "miou": round(float(np.mean(scores)), 5) if scores else None,
        "per_source": per_source,
        "model": card.name,
        "on": f"held-out images of {params.sources}",
    }


def _check_same_grid(reference: Path, other: Path) -> None:
    from segment_plugin.engine.raster_io import open_input

    with open_input(reference, min_size=1) as ref, open_input(other, min_size=1) as src:
        if (ref.crs, ref.transform, ref.shape) != (src.crs, src.transform, src.shape):
            raise InputError(f"{reference} is not on the grid of {other}")


def _compare_rasters(prediction: Path, reference: Path, codes: list[int]) -> np.ndarray:
    """Confusion matrix of two class rasters on one grid, block by block."""
    import rasterio

    lookup = code_lookup(codes)
    matrix = np.zeros((len(codes),) * 2, np.int64)
    with rasterio.open(prediction) as pred, rasterio.open(reference) as ref:
        for _, window in pred.block_windows(1):
            truth = lookup[ref.read(1, window=window).astype(np.int64)]
            guess = lookup[pred.read(1, window=window).astype(np.int64)]
            truth[guess == metrics.IGNORE_INDEX] = metrics.IGNORE_INDEX  # nodata in the prediction
            matrix += metrics.confusion_matrix(truth, guess, len(codes))
    return matrix


def _raster_matrix(params: EvaluateParams, reporter: Reporter) -> tuple[np.ndarray, list, str]:
    from segment_plugin.engine.inference import segment

    card = resolve_model(params.model).card
    _check_same_grid(params.reference, params.raster)
    with tempfile.TemporaryDirectory(prefix="segment-evaluate-") as tmp:
        predicted_path = Path(tmp) / "predicted.tif"
        segment(
            SegmentParams(
                params.raster,
                predicted_path,
                model=params.model,
                tile=params.tile,
                tta=params.tta,
                runtime=params.runtime,
                keep_class_weights=params.keep_class_weights,
            ),
            reporter,
        )
        matrix = _compare_rasters(predicted_path, params.reference, card.class_codes)
    return matrix, [c.name for c in card.classes], card.name


def _prediction_matrix(params: EvaluateParams) -> tuple[np.ndarray, list, str]:
    """An existing class raster vs the reference; classes from its metadata, else the codes seen."""
    from segment_plugin.engine.vectorize import class_names, open_class_raster, present_codes

    _check_same_grid(params.reference, params.prediction)
    with open_class_raster(params.prediction) as pred, open_class_raster(params.reference) as ref:
        names = class_names(pred)
        if not names:
            ignore = {metrics.IGNORE_INDEX}
            seen = present_codes(pred, ignore) | present_codes(ref, ignore)
            names = {code: f"class {code}" for code in sorted(seen)}
        model = pred.tags().get("MODEL", params.prediction.name)
    codes = sorted(names)
    matrix = _compare_rasters(params.prediction, params.reference, codes)
    return matrix, [names[c] for c in codes], model


def evaluate(params: EvaluateParams, reporter: Reporter | None = None) -> dict[str, Any]:
    """Measure a model on reference labels; optionally write an HTML report."""
    reporter = reporter or Reporter()
    if params.report is not None:
        source = params.images or params.raster or params.prediction
        outputs.check_output_path(params.report, source, params.overwrite)
    if params.sources is not None:
        return _sources_result(params, reporter)
    if params.images is not None:
        result, model = _pairs_report(params, reporter)
        on = str(params.images)
        if "partial_labels" in result:
            reporter.log(result["partial_labels"])
    else:
        if params.raster is not None:
            matrix, names, model = _raster_matrix(params, reporter)
            on = f"{params.raster} vs {params.reference}"
        else:
            matrix, names, model = _prediction_matrix(params)
            on = f"{params.prediction} vs {params.reference}"
        result = metrics.report(matrix, names)
    result.update(model=model, on=on)
    if params.report is not None:
        with outputs.committed([params.report]) as (temp,):
            temp.write_text(report_html(result), encoding="utf-8")
        result["report"] = str(params.report)
    return result


def _confusion_svg(matrix: list[list[int]], names: list[str]) -> str:
    """Row-normalised confusion matrix as an SVG heat map with counts."""
    cm = np.asarray(matrix, np.float64)
    rows = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    cell, left, top = 70, 110, 110
    size = len(names)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + cell * size + 10}" '
        f'height="{top + cell * size + 10}" font-family="sans-serif" font-size="12">'
    ]
    for i, name in enumerate(names):
        label = html.escape(name)
        y = top + cell * i + cell / 2
        parts.append(f'<text x="{left - 6}" y="{y + 4}" text-anchor="end">{label}</text>')
        x = left + cell * i + cell / 2
        parts.append(
            f'<text x="{x}" y="{top - 8}" text-anchor="start" '
            f'transform="rotate(-45 {x} {top - 8})">{label}</text>'
        )
        for j in range(size):
            shade = int(255 - 200 * rows[i, j])
            colour = f"rgb({shade},{shade},255)"
            text = "white" if rows[i, j] > 0.6 else "black"
            parts.append(
                f'<rect x="{left + cell * j}" y="{top + cell * i}" width="{cell}" height="{cell}" '
                f'fill="{colour}" stroke="#888"/><text x="{left + cell * j + cell / 2}" '
                f'y="{top + cell * i + cell / 2 + 4}" text-anchor="middle" fill="{text}">'
                f"{rows[i, j]:.2f}</text>"
            )
    parts.append('<text x="4" y="14">rows: reference, columns: prediction</text></svg>')
    return "".join(parts)


def report_html(result: dict[str, Any]) -> str:
    """A self-contained HTML page for a metrics report."""
    names = result["classes"]
    rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{_fmt(result['per_class_iou'][n])}</td>"
        f"<td>{_fmt(result['per_class_dice'][n])}</td></tr>"
        for n in names
    )
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Evaluation of {html.escape(result["model"])}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 10px;text-align:right}}
td:first-child{{text-align:left}}</style></head><body>
<h1>Model {html.escape(result["model"])}</h1>
<p>On {html.escape(result["on"])}: {result["pixels"]:,} labelled pixels.</p>
<p><b>mIoU {_fmt(result["miou"])}</b> · pixel accuracy {_fmt(result["pixel_accuracy"])}</p>
<table><tr><th>class</th><th>IoU</th><th>Dice</th></tr>{rows}</table>
<h2>Confusion matrix</h2>{_confusion_svg(result["confusion_matrix"], names)}
<script type="application/json" id="metrics">{html.escape(json.dumps(result))}</script>
</body></html>
"""


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"
