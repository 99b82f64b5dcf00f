"""The ``segment-plugin`` command line: parse arguments, call the library, report.

Thin by design: each command turns its arguments into a call of the engine library and reports
through a :class:`~segment_plugin.engine.progress.Reporter`. The QGIS side runs the very same
commands with ``--progress json``.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

from segment_plugin import plugin_files
from segment_plugin.engine.errors import (
    CancelledError,
    InputError,
    OutputError,
    SegmentPluginError,
)
from segment_plugin.engine.info import engine_info, format_info, require_full_engine
from segment_plugin.engine.models.architectures import ARCHITECTURES
from segment_plugin.engine.params import (
    CLASS_WEIGHT_SCHEMES,
    CONTRAST,
    DEVICES,
    LOSS_NAMES,
    RUNTIMES,
)
from segment_plugin.engine.progress import (
    PROTOCOL_VERSION,
    JsonLinesReporter,
    Reporter,
    TextReporter,
    cancel_on_signals,
)

Command = Callable[[argparse.Namespace, Reporter], None]

#: GDAL's block cache in MB, unless the environment sets GDAL_CACHEMAX. GDAL's default, 5 % of the
#: machine's memory, keeps the blocks read and written, so a segment run grew with the raster:
#: 1.6 GB peak for 5000×5000 and 3.1 GB for 20000×20000 on a 24 GB machine; 2.2 GB with 256 MB,
#: at the same speed (what still grows is the accumulator, which is as wide as the raster).
GDAL_CACHE_MB = "256"
P = TypeVar("P")


def _cmd_info(args: argparse.Namespace, reporter: Reporter) -> None:
    report = engine_info(probe_devices=not args.no_devices)
    if args.scheduler:
        from segment_plugin.engine.scaleout import scheduler_report

        report["dask"] = scheduler_report(args.scheduler)
    reporter.result(**report)
    if args.progress == "text":
        print(format_info(report))


def params_from_args(cls: type[P], args: argparse.Namespace) -> P:
    """The job's parameter object from the parsed flags (flag names = field names)."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})  # type: ignore[arg-type]


def _number_list(
    what: str, example: str, kind: type = int
) -> Callable[[str], tuple[int | float, ...]]:
    """An argparse type for comma-separated numbers of ``kind``, e.g. bands ``3,2,1``."""

    def parse(text: str) -> tuple[int | float, ...]:
        try:
            values = tuple(kind(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{what} must look like {example}, got {text!r}"
            ) from None
        if not values:
            raise argparse.ArgumentTypeError(f"no {what} given")
        return values

    return parse


_band_list = _number_list("bands", "3,2,1")


def _add_dask(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scheduler",
        help="run on Dask, by ranges of rows: 'local' (a cluster of --workers processes here) "
        "or a scheduler's tcp://HOST:PORT (inputs and outputs on a filesystem every worker sees)",
    )
    parser.add_argument(
        "--workers", type=at_least(1), default=2, help="processes of --scheduler local (default 2)"
    )


def _cmd_segment(args: argparse.Namespace, reporter: Reporter) -> None:
    from segment_plugin.engine.inference import segment
    from segment_plugin.engine.params import SegmentParams
    from segment_plugin.engine.segment_many import expand_inputs, segment_many

    inputs = expand_inputs(args.input)
    if args.output_dir is not None:
        if args.output or args.probabilities or args.vector:
            raise InputError(
                "with --output-dir each class raster goes there as <name>_<model>.tif: "
                "--output, --probabilities and --vector are for one input"
            )
        template = argparse.Namespace(
            **{**vars(args), "input": inputs[0], "output": args.output_dir / "_.tif"}
        )
        many = segment_many(
            params_from_args(SegmentParams, template), inputs, args.output_dir, reporter
        )
        reporter.result(**many)
        if args.progress == "text":
            for result in many["outputs"]:
                print(f"wrote {result['output']} ({result['seconds']} s)")
        return
    if len(inputs) != 1 or args.output is None:
        raise InputError("give --output FILE for one input, or --output-dir DIR for several")
    args.input = inputs[0]
    result = segment(params_from_args(SegmentParams, args), reporter)
    reporter.result(**result)
    if args.progress == "text":
        print(
            f"wrote {result['output']} ({result['tiles']} tiles, {result['seconds']} s, "
            f"{result['mpx_per_s']} Mpx/s on {result['device']})"
        )
        areas = result["class_area_m2"]
        for name, pixels in result["class_pixels"].items():
            area = f"{areas[name] / 10_000:12.4f} ha" if areas else ""
            print(f"  {name:<12} {pixels:>12} px {area}")
        if "vector" in result:
            print(f"wrote {result['vector']['features']} polygons to {result['vector']['output']}")


def _cmd_export_onnx(args: argparse.Namespace, reporter: Reporter) -> None:
    from segment_plugin.engine import outputs
    from segment_plugin.engine.models.onnx_export import add_onnx_to_package, export_onnx
    from segment_plugin.engine.models.registry import resolve_model

    require_full_engine("exporting to ONNX")
    package = resolve_model(args.model)
    if (args.output is None) == (not args.into_package):
        raise InputError("give either --output FILE.onnx or --into-package")
    reporter.progress(0.0, "exporting")
    if args.into_package:
        result = add_onnx_to_package(package)
    else:
        if args.output.suffix.lower() != ".onnx":
            raise InputError(f"--output is an ONNX file: name it .onnx, not {args.output.name}")
        outputs.check_output_path(args.output, package.path, args.overwrite)
        stretch = _stretch_of(args, package.card) if args.stretch_of else None
        result = export_onnx(package, args.output, deepness=not args.no_deepness, stretch=stretch)
    reporter.result(**result)
    if args.progress == "text":
        print(f"wrote {result['output']} ({result['bytes'] / 1e6:.1f} MB)")


def _stretch_of(args: argparse.Namespace, card: Any) -> Any:
    """The statistics ``segment`` would stretch ``--stretch-of`` by, for Deepness' keys."""
    from segment_plugin.engine import raster_io
    from segment_plugin.engine.normalize import raster_stats, raster_stretch

    if args.no_deepness:
        raise InputError("--stretch-of goes into Deepness' keys: not with --no-deepness")
    if not card.normalization.per_raster:
        raise InputError(
            f"--stretch-of: model {card.name!r} does not stretch each raster, so its Deepness "
            "keys need no raster"
        )
    with raster_io.open_input(args.stretch_of) as src:
        bands = raster_io.resolve_bands(src, card, None)
        stats = raster_stats(src, bands, card.normalization.low, card.normalization.high)
        return raster_stretch(card, stats, src.dtypes[bands[0] - 1])


def _cmd_average(args: argparse.Namespace, reporter: Reporter) -> None:
    from segment_plugin.engine.models.average import average_models

    require_full_engine("averaging models")
    result = average_models(args.models, args.output, args.name, args.overwrite, reporter)
    reporter.result(**result)
    if args.progress == "text":
        print(f"wrote {result['output']}, the mean of {len(result['models'])} models' weights")


def _cmd_models(args: argparse.Namespace, reporter: Reporter) -> None:
    from dataclasses import asdict

    from segment_plugin.engine.models.registry import add_onnx_model, list_models, user_models_dir

    if args.add is not None:
        added = add_onnx_model(args.add, args.name, args.overwrite)
        reporter.result(added=str(added.path), card=asdict(added.card))
        if args.progress == "text":
            print(f"added {added.card.name!r}: {added.path}\n  {added.card.description}")
        return

    listing = []
    for origin, found in list_models():
        if isinstance(found, Exception):
            listing.append({"origin": origin, "error": str(found)})
            continue
        card = asdict(found.card)
        # what the card's fields imply, so the QGIS side need not derive it again
        card["normalization"]["per_raster"] = found.card.normalization.per_raster
        listing.append({"origin": origin, "path": str(found.path), "card": card})
    reporter.result(models=listing, user_dir=str(user_models_dir()))
    if args.progress == "text":
        if not listing:
            print("no models installed")
        for entry in listing:
            if "error" in entry:
                print(f"[{entry['origin']}] unusable: {entry['error']}")
                continue
            card = entry["card"]
            classes = ", ".join(c["name"] for c in card["classes"])
            miou = card["metrics"].get("miou")
            print(f"{card['name']} [{entry['origin']}] {entry['path']}")
            print(
                f"  bands {', '.join(card['bands'])}; classes {classes}; "
                f"resolution {card['resolution_m'] or 'any'} m; tile {card['tile_size']}"
                + (f"; mIoU {miou:.3f}" if miou is not None else "")
            )
            if card["limitations"]:
                print(f"  limitations: {card['limitations']}")


def _cmd_vectorize(args: argparse.Namespace, reporter: Reporter) -> None:
    from segment_plugin.engine.params import VectorizeParams
    from segment_plugin.engine.vectorize import vectorize

    result = vectorize(params_from_args(VectorizeParams, args), reporter)
    reporter.result(**result)
    if args.progress == "text":
        print(f"wrote {result['features']} polygons to {result['output']} ({result['seconds']} s)")
        for name, entry in result["classes"].items():
            print(f"  {name:<12} {entry['features']:>8} polygons {entry['area_m2'] / 1e4:12.4f} ha")


def _cmd_export_rle(args: argparse.Namespace, reporter: Reporter) -> None:
    from segment_plugin.engine.rle_export import export_rle

    result = export_rle(args.input, args.output, args.counts, args.overwrite)
    reporter.result(**result)
    if args.progress == "text":
        print(f"wrote {len(result['classes'])} class masks to {result['output']}")


def _cmd_train(args: argparse.Namespace, reporter: Reporter) -> None:
    from segment_plugin.engine.params import TrainParams
    from segment_plugin.engine.training.train import train

    require_full_engine("training")
    result = train(params_from_args(TrainParams, args), reporter)
    reporter.result(**result)
    if args.progress == "text":
        print(
            f"best model (epoch {result['best_epoch']}, val mIoU {result['val_miou']:.4f}) "
            f"in {result['output']}"
        )


def _cmd_evaluate(args: argparse.Namespace, reporter: Reporter) -> None:
    from segment_plugin.engine.evaluate import evaluate
    from segment_plugin.engine.params import EvaluateParams

    result = evaluate(params_from_args(EvaluateParams, args), reporter)
    reporter.result(**result)
    if args.progress == "text":  # the contract: one JSON object on stdout
        print(json.dumps(result))


def _cmd_preview(args: argparse.Namespace, reporter: Reporter) -> None:
    from segment_plugin.engine.preview import write_preview

    path = write_preview(args.image, args.classes, args.output, args.max_side, args.overwrite)
    reporter.result(output=str(path))
    if args.progress == "text":
        print(f"wrote {path}")


def _cmd_export_chips(args: argparse.Namespace, reporter: Reporter) -> None:
    from segment_plugin.engine.params import _read_mapping
    from segment_plugin.engine.training.chips import export_chips

    mapping = _read_mapping(args.mapping) if args.mapping else None
    chips = export_chips(args.raster, args.labels, args.field, mapping, args.output, args.patch)
    reporter.result(output=str(args.output), chips=len(chips))
    if args.progress == "text":
        print(f"wrote {len(chips)} chip pairs to {args.output}")


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer not below ``minimum`` (a 0 px preview, a 3 px chip)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        choices=("text", "json"),
        default="text",
        help="text for people (default) or json lines for programs such as the QGIS plugin",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="segment-plugin",
        description="Land-cover segmentation engine of the segment_plugin QGIS plugin.",
    )
    parser.add_argument("--version", action="version", version=plugin_files.version())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser("info", help="report Python, library versions and devices")
    info.add_argument(
        "--no-devices", action="store_true", help="do not import TensorFlow to list devices"
    )
    info.add_argument("--scheduler", help="also connect to this Dask scheduler and report it")
    _add_common(info)
    info.set_defaults(keras=True, handler=_cmd_info)

    seg = commands.add_parser(
        "segment",
        help="segment a raster into a land-cover class raster",
        description="Tiled, blended inference on a raster of any size; writes a class GeoTIFF "
        "on the input's grid with a colour table and a .qml style beside it.",
    )
    seg.add_argument(
        "input",
        type=Path,
        nargs="+",
        help="raster(s) to segment (any GDAL-readable file), folders of rasters, glob patterns",
    )
    seg.add_argument("--output", type=Path, help="class raster to write (GeoTIFF), one input")
    seg.add_argument(
        "--output-dir",
        type=Path,
        help="for several inputs: each class raster goes here as <name>_<model>.tif",
    )
    seg.add_argument("--model", default="landcover", help="bundled/user model name or folder")
    seg.add_argument("--probabilities", type=Path, help="also write class probabilities (uint8)")
    seg.add_argument("--vector", type=Path, help="also write class polygons (.shp or .gpkg)")
    seg.add_argument("--bands", type=_band_list, help="input bands for the model, e.g. 3,2,1")
    seg.add_argument("--resolution", type=float, help="work at this many metres per pixel")
    seg.add_argument("--tile", type=int, help="tile size in pixels (default: the model's)")
    seg.add_argument("--overlap", type=int, help="tile overlap in px (default: 3/8 of the tile)")
    seg.add_argument(
        "--batch", type=int,
        help="tiles per model call (default: 4 of up to 512 px, fewer of larger tiles; 2 of 768)",
    )  # fmt: skip
    seg.add_argument("--device", choices=DEVICES, default="auto")
    seg.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="auto",
        help="keras (TensorFlow) or onnx (ONNX Runtime); auto: ONNX where the model has one",
    )
    _add_dask(seg)
    seg.add_argument("--tta", action="store_true", help="average over flipped copies (4× slower)")
    seg.add_argument(
        "--keep-class-weights",
        action="store_true",
        help="do not undo the class weights the model was trained with: more of the classes "
        "that were rare in its training data (trees, roads for the bundled model)",
    )
    seg.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    _add_common(seg)
    seg.set_defaults(keras=_runs_keras, handler=_cmd_segment)

    vec = commands.add_parser(
        "vectorize",
        help="class raster → polygons (shapefile or GeoPackage)",
        description="One polygon per connected class region, along pixel edges; attributes "
        "class_id, class, area_m2, perim_m. Streams by strips of rows.",
    )
    vec.add_argument("input", type=Path, help="class raster (one band of integer codes)")
    vec.add_argument("--output", required=True, type=Path, help="OUT.shp or OUT.gpkg")
    vec.add_argument("--classes", type=_band_list, help="class ids to keep, e.g. 1,2 (default all)")
    vec.add_argument("--min-area", type=float, help="minimum mapping unit in m² (sieve first)")
    vec.add_argument(
        "--simplify", type=float, help="simplify by this many metres, keeping topology"
    )
    vec.add_argument("--smooth", action="store_true", help="3×3 majority filter first")
    vec.add_argument("--layer", help="GeoPackage layer name (default: the file name)")
    _add_dask(vec)
    vec.add_argument("--overwrite", action="store_true", help="replace an existing output")
    _add_common(vec)
    vec.set_defaults(handler=_cmd_vectorize)

    rle = commands.add_parser("export-rle", help="class raster → COCO run-length masks (JSON)")
    rle.add_argument("input", type=Path, help="class raster")
    rle.add_argument("--output", required=True, type=Path, help="masks.json")
    rle.add_argument(
        "--counts",
        choices=("string", "list"),
        default="string",
        help="COCO compressed string (default) or the plain list of run lengths",
    )
    rle.add_argument("--overwrite", action="store_true", help="replace an existing output")
    _add_common(rle)
    rle.set_defaults(handler=_cmd_export_rle)

    tr = commands.add_parser(
        "train",
        help="train or fine-tune a model on image/mask pairs",
        description="Patches from image/mask pair folders (<name>.jpg + <name>_mask.png); the best "
        "model by validation mIoU is written as a model package; resumable with --resume.",
    )
    tr.add_argument("--images", action="append", default=[], type=Path, help="pairs folder")
    tr.add_argument("--raster", type=Path, help="a georeferenced raster with …")
    tr.add_argument(
        "--labels", type=Path, help="… a polygon layer (shp, gpkg, …) or a class raster"
    )
    tr.add_argument("--field", help="… the polygon field that holds the class")
    tr.add_argument("--mapping", help='label value → class code as JSON, e.g. {"house": 1}')
    tr.add_argument("--val-images", type=Path, help="validation pairs folder (default: a split)")
    tr.add_argument(
        "--sources",
        type=Path,
        help="JSON file of labelled sets, each with its folder, ground resolution (gsd_m), share "
        "of the patches (weight) and held-out images (validation patterns)",
    )
    tr.add_argument("--data-root", type=Path, help="the sources' folders are relative to this")
    tr.add_argument(
        "--resolution",
        type=float,
        help="metres per pixel to train at (default: the base model's); written in the card",
    )
    tr.add_argument("--output", required=True, type=Path, help="model package folder to write")
    start = tr.add_mutually_exclusive_group()
    start.add_argument("--base-model", help="fine-tune this model (name or folder)")
    start.add_argument("--arch", default="separable_unet", choices=ARCHITECTURES)
    tr.add_argument(
        "--filters",
        type=int,
        help="a new model's width: filters of its first level, doubled per level "
        "(default 16 for separable_unet and the efficientnet_lite*_unet decoders, 32 for unet "
        "and unet_aspp)",
    )
    tr.add_argument("--classes", type=Path, help="classes.json (needed for a new model)")
    tr.add_argument("--bands", type=int, help="use the first N bands of the images")
    tr.add_argument("--epochs", type=int, default=20)
    tr.add_argument("--patch", type=int, default=256, help="patch size: 128, 256 or 512")
    tr.add_argument(
        "--patch-sizes",
        type=_number_list("patch sizes", "192,256,384"),
        default=(),
        help="train on patches of these sizes in turn, step by step, the batch scaled to the same "
        "pixels as --batch patches of --patch (context jitter: a map that depends less on the "
        "tile size); validation stays at --patch",
    )
    tr.add_argument(
        "--tile-size",
        type=int,
        help="inference tile written in the model card (default: max(patch, 256)); larger "
        "tiles give the model more context",
    )
    tr.add_argument("--batch", type=int, default=8)
    tr.add_argument("--steps-per-epoch", type=int)
    tr.add_argument(
        "--learning-rate", type=float, help="default: 1e-3 for a new model, 1e-4 for a fine-tune"
    )
    tr.add_argument("--loss", default="ce+dice", choices=LOSS_NAMES)
    tr.add_argument(
        "--class-weights",
        default="auto",
        choices=CLASS_WEIGHT_SCHEMES,
        help="the loss's class weights (auto: median_frequency, bounded to 0.25-4 when "
        "fine-tuning; base: the base model's own)",
    )
    tr.add_argument("--freeze-encoder", action="store_true")
    tr.add_argument(
        "--train-batchnorm",
        action="store_true",
        help="fine-tunes: also update the base's batch-normalisation statistics (by default "
        "they stay the base's; worth it only with plenty of data)",
    )
    tr.add_argument(
        "--distill",
        type=float,
        default=1.0,
        help="fine-tunes on partial labels: weight of keeping the base model's odds among the "
        "classes an 'other' pixel may be (0: off)",
    )
    tr.add_argument(
        "--consistency",
        type=float,
        default=0.0,
        help="weight of holding each patch's centre, classed alone, to the whole patch's "
        "classes there: maps that change less with the tile size (0: off)",
    )
    tr.add_argument("--no-augment", dest="augment", action="store_false")
    tr.add_argument(
        "--contrast",
        type=_number_list("contrast", "0.5,1.2", float),
        default=CONTRAST,
        help="LOW,HIGH: the range of the contrast jitter (default 0.8,1.2); widen it for "
        "imagery whose contrast differs from the training data's",
    )
    tr.add_argument(
        "--stretch",
        action="store_true",
        help="stretch each image's 2-98 %% band percentiles to the full range before the model, "
        "in training and (the card says so) in segment: for imagery whose contrast varies",
    )
    tr.add_argument(
        "--stretch-max-gain",
        type=float,
        metavar="GAIN",
        help="with --stretch: widen no band's range by more than GAIN (e.g. 2), so that a "
        "raster of one land cover, a forest, is not blown up to full contrast",
    )
    tr.add_argument("--val-fraction", type=float, default=0.2)
    tr.add_argument("--max-ignore", type=float, default=0.5, help="drop patches with more ignore")
    tr.add_argument("--patience", type=int, default=5, help="early stopping (epochs)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--device", choices=DEVICES, default="auto")
    tr.add_argument(
        "--workers",
        type=int,
        help="threads cutting training patches (default: 1 on the CPU, up to 8 with a GPU)",
    )
    tr.add_argument("--name", help="model name in its card (default: the folder's name)")
    tr.add_argument("--description", default="", help="one line for the model card")
    tr.add_argument("--resume", action="store_true", help="continue from the last epoch")
    tr.add_argument("--overwrite", action="store_true")
    _add_common(tr)
    tr.set_defaults(keras=True, handler=_cmd_train)

    ev = commands.add_parser(
        "evaluate",
        help="measure a model on reference labels (prints one JSON object)",
    )
    ev.add_argument("--model", default="landcover", help="model name or folder")
    ev.add_argument("--images", type=Path, help="folder of image/mask pairs")
    ev.add_argument(
        "--gsd",
        type=float,
        help="metres per pixel of --images that are not georeferenced (resampled to the model's)",
    )
    ev.add_argument(
        "--sources",
        type=Path,
        help="a training sources file: each source's held-out images, reported per source",
    )
    ev.add_argument("--data-root", type=Path, help="the sources' folders are relative to this")
    ev.add_argument("--raster", type=Path, help="raster to segment …")
    ev.add_argument("--reference", type=Path, help="… and its reference class raster")
    ev.add_argument("--prediction", type=Path, help="compare this class raster to --reference")
    ev.add_argument("--report", type=Path, help="also write an HTML report")
    ev.add_argument("--tile", type=int)
    ev.add_argument("--runtime", choices=RUNTIMES, default="auto", help="as segment --runtime")
    ev.add_argument("--tta", action="store_true", help="as segment --tta (4× slower)")
    ev.add_argument(
        "--keep-class-weights",
        action="store_true",
        help="as segment --keep-class-weights: measure which suits your region",
    )
    ev.add_argument("--overwrite", action="store_true")
    _add_common(ev)
    ev.set_defaults(keras=_runs_keras, handler=_cmd_evaluate)

    ch = commands.add_parser(
        "export-chips", help="raster + label polygons → georeferenced image/mask chip pairs"
    )
    ch.add_argument("raster", type=Path, help="the image raster")
    ch.add_argument(
        "--labels", required=True, type=Path, help="polygon layer (with --field) or class raster"
    )
    ch.add_argument("--field", help="the polygon field holding the class")
    ch.add_argument("--mapping", help="field value → class code as JSON (default: codes)")
    ch.add_argument("--output", required=True, type=Path, help="folder for the chips")
    ch.add_argument(
        "--patch", type=at_least(32), default=256, help="chip size in pixels (at least 32)"
    )
    _add_common(ch)
    ch.set_defaults(handler=_cmd_export_chips)

    pre = commands.add_parser("preview", help="PNG of an image and its classes side by side")
    pre.add_argument("image", type=Path, help="the segmented raster")
    pre.add_argument("classes", type=Path, help="its class raster (from segment)")
    pre.add_argument("--output", required=True, type=Path, help="preview.png")
    pre.add_argument(
        "--max-side", type=at_least(16), default=1000, help="panel size limit in pixels"
    )
    pre.add_argument("--overwrite", action="store_true")
    _add_common(pre)
    pre.set_defaults(handler=_cmd_preview)

    onnx = commands.add_parser(
        "export-onnx",
        help="a model as one ONNX file (runs in Deepness, ONNX Runtime and other tools)",
        description="Keras' ONNX export: NCHW float input scaled as Deepness scales it, class "
        "probabilities out (the class weights' bias undone in the graph), our model card and "
        "Deepness' metadata keys inside.",
    )
    onnx.add_argument("model", help="bundled/user model name or folder")
    onnx.add_argument("--output", type=Path, help="the .onnx file to write")
    onnx.add_argument(
        "--into-package",
        action="store_true",
        help="write model.onnx into the model's own folder instead, for --runtime onnx",
    )
    onnx.add_argument(
        "--no-deepness",
        action="store_true",
        help="without Deepness' keys (for a model whose normalisation they cannot express)",
    )
    onnx.add_argument(
        "--stretch-of",
        type=Path,
        metavar="RASTER",
        help="a model that stretches each raster: write this raster's stretch into Deepness' "
        "keys (Deepness then treats every raster as this one)",
    )
    onnx.add_argument("--overwrite", action="store_true")
    _add_common(onnx)
    onnx.set_defaults(keras=True, handler=_cmd_export_onnx)

    avg = commands.add_parser(
        "average",
        help="one model whose weights are the mean of several fine-tunes of one base",
        description="A 'model soup': fine-tunes of one base that differ only in their seed, "
        "averaged weight by weight. Their cards must agree on classes, bands, normalisation, "
        "resolution, tile and class weights; the new card keeps the first's, with the members "
        "in its training record and no metrics (measure it with evaluate).",
    )
    avg.add_argument("models", nargs="+", help="two or more model names or folders")
    avg.add_argument("--output", type=Path, required=True, help="the new model's folder")
    avg.add_argument("--name", help="its name (default: the first model's)")
    avg.add_argument("--overwrite", action="store_true")
    _add_common(avg)
    avg.set_defaults(keras=True, handler=_cmd_average)

    models = commands.add_parser("models", help="list bundled and user models with their cards")
    models.add_argument(
        "--add",
        type=Path,
        metavar="FILE.onnx",
        help="add an ONNX model (Deepness format or our export) to your models folder",
    )
    models.add_argument("--name", help="its name (default: the file's)")
    models.add_argument("--overwrite", action="store_true", help="replace a user model so named")
    _add_common(models)
    models.set_defaults(handler=_cmd_models)
    return parser


def _damaged_raster(exc: BaseException) -> InputError | None:
    """A GDAL read failure as the input error it is: GDAL's own line names file, band and block.

    Rasterio raises "Read failed. See previous exception for details." and chains GDAL's message
    (e.g. "cut.tif, band 1: IReadBlock failed at X offset 0, Y offset 2: TIFFReadEncodedTile()
    failed."): a raster cut short, garbage in a compressed tile, a VRT whose source is gone.
    """
    errors = sys.modules.get("rasterio.errors")
    if errors is None or not isinstance(exc, errors.RasterioIOError):
        return None
    if not str(exc).startswith("Read failed"):
        return None
    detail = str(exc.__cause__ or exc).strip()
    return InputError(
        f"cannot read the raster data ({detail}): the file looks damaged or truncated; "
        "check it with gdalinfo -checksum"
    )


#: how the libraries under us say it: the C library, GDAL's GTiff writer, SQLite (GeoPackage)
_DISK_FULL_WORDS = ("No space left on device", "Free disk space", "database or disk is full")


def _disk_full(exc: BaseException) -> OutputError | None:
    """No space left (or quota exceeded) while writing: the user's problem to fix, said plainly."""
    text = f"{exc} {exc.__cause__ or ''}"
    full = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if not full and not any(words in text for words in _DISK_FULL_WORDS):
        return None
    where = f" writing {exc.filename}" if getattr(exc, "filename", None) else ""
    return OutputError(
        f"the disk is full{where}: nothing was kept, any previous output is as it was; "
        "free some space (or choose another folder) and run again"
    )


def _failed(reporter: Reporter, exc: SegmentPluginError) -> int:
    reporter.emit("error", code=exc.code, message=str(exc))
    status = "cancelled" if isinstance(exc, CancelledError) else "error"
    reporter.emit("end", status=status, exit_code=exc.exit_code)
    return exc.exit_code


def _runs_keras(args: argparse.Namespace) -> bool:
    """Whether a segment/evaluate run will load Keras (not when its model runs on ONNX)."""
    from segment_plugin.engine.models.registry import resolve_model

    if getattr(args, "prediction", None) is not None:
        return False
    try:
        return resolve_model(args.model).runtime(args.runtime) == "keras"
    except SegmentPluginError:
        return False  # the command reports it


def _import_keras_quietly() -> None:
    """Import Keras (and TensorFlow) now, with what C++ code prints to stderr meanwhile dropped.

    TensorFlow and absl print start-up lines (``All log messages before absl::InitializeLog()``,
    oneDNN and CPU-feature notices) from C++ at import, which ``TF_CPP_MIN_LOG_LEVEL`` does not
    all reach. ``--debug`` keeps them. A Keras that cannot be imported is left to the command
    (``info`` reports an incomplete environment; the others a missing dependency).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's own info and warnings
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        import keras  # noqa: F401 - the import is the point
    except ImportError:
        pass
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return the process exit code (0 ok, 2 bad input, 3 missing, 130 cancel)."""
    args = build_parser().parse_args(argv)
    os.environ.setdefault("GDAL_CACHEMAX", GDAL_CACHE_MB)  # read by GDAL at its first block I/O
    reporter: Reporter = JsonLinesReporter() if args.progress == "json" else TextReporter()
    reporter.emit(
        "start",
        protocol=PROTOCOL_VERSION,
        command=args.command,
        version=plugin_files.version(),
        pid=os.getpid(),
    )
    cancel_on_signals(reporter.cancel)
    handler: Command = args.handler
    try:
        # info --no-devices never imports Keras: a pre-import would make it 30× slower
        keras = getattr(args, "keras", False)
        keras = keras(args) if callable(keras) else keras
        if keras and not args.debug and not getattr(args, "no_devices", 0):
            _import_keras_quietly()
        handler(args, reporter)
    except SegmentPluginError as exc:
        return _failed(reporter, exc)
    except Exception as exc:
        if reporter.cancel.is_set():  # a library failing because we interrupted it
            return _failed(reporter, CancelledError("cancelled"))
        known = _damaged_raster(exc) or _disk_full(exc)
        if known is not None:
            return _failed(reporter, known)
        # a bug: one clear line, the traceback only on request
        if args.debug:
            traceback.print_exc()
        message = f"internal error ({type(exc).__name__}: {exc}); rerun with --debug for details"
        reporter.emit("error", code="internal_error", message=message)
        reporter.emit("end", status="error", exit_code=1)
        return 1
    reporter.emit("end", status="ok", exit_code=0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
