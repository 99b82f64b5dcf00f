"""`make bench-peers`: Deepness and segment_plugin side by side, same ONNX model, same rasters.

The bundled model is exported with ``export-onnx`` (class weights undone in the graph, Deepness'
keys inside, the demo's contrast stretch written in: the mosaic is made of the demo) and run twice
per raster, both at the rasters' native 25 cm: by Deepness 0.6.5's own ``MapProcessorSegmentation``
(headless, in a QGIS process, as its tests run it: whole layer, native resolution, tile 512,
overlap 38 %, batch 4, no probability threshold, no median filter) and by our CLI (the same file
added with ``models --add``; ``segment --vector``: the class raster and its polygons, as Deepness
makes a class map and polygon layers). Each run is its own process: wall time and peak RSS from
wait4. Then how far the two class maps agree, on the whole raster and on the pixels next to
Deepness' tile borders (where pasting tiles leaves seams) against the rest.

Run with the QGIS test venv's Python (it has qgis, and make bench-peers adds Deepness' own
dependencies to it: onnxruntime and opencv within Deepness' pins, numpy left as QGIS has it).
Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / "build" / "peers"
PEERS = ROOT.parent / "shared" / "peers"
DEMO = ROOT.parent / "shared" / "data" / "rasters" / "demo_nl_gorinchem_rgb_25cm.tif"
ENGINE = ROOT / ".venv" / "bin" / "python"
TILE, BATCH, OVERLAP_PERCENT = 512, 4, 38  # ours: 3/8 of 512 = 192 px; Deepness: 38 % → 194 px


def deepness_child(raster: str, model: str, out: str, resolution_cm: str | None = None) -> None:
    """In its own process: Deepness segments ``raster`` with ``model``; classes saved to ``out``.

    ``resolution_cm``: Deepness' processing resolution (its GUI's, from the model's
    ``resolution`` key); by default the raster's own, as the bench runs it.
    """
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    sys.path.insert(0, str(WORK))  # the unzipped plugin: import deepness
    from unittest.mock import MagicMock

    from qgis.core import QgsApplication, QgsProject, QgsRasterLayer

    app = QgsApplication([], False)
    app.initQgis()
    from deepness.common.channels_mapping import ChannelsMapping, ImageChannelStandaloneBand
    from deepness.common.processing_overlap import ProcessingOverlap, ProcessingOverlapOptions
    from deepness.common.processing_parameters.map_processing_parameters import ProcessedAreaType
    from deepness.common.processing_parameters.segmentation_parameters import (
        SegmentationParameters,
    )
    from deepness.processing.map_processor.map_processor_segmentation import (
        MapProcessorSegmentation,
    )
    from deepness.processing.models.segmentor import Segmentor

    layer = QgsRasterLayer(raster, "raster")
    QgsProject.instance().addMapLayer(layer)
    segmentor = Segmentor(model)
    mapping = ChannelsMapping()
    mapping.set_image_channels([ImageChannelStandaloneBand(b, str(b)) for b in (1, 2, 3)])
    mapping.set_number_of_model_inputs(3)
    mapping.set_number_of_model_output_channels(segmentor.get_number_of_output_channels()[0])
    params = SegmentationParameters(
        resolution_cm_per_px=float(resolution_cm or layer.rasterUnitsPerPixelX() * 100),
        tile_size_px=TILE,
        processed_area_type=ProcessedAreaType.ENTIRE_LAYER,
        batch_size=BATCH,
        local_cache=False,
        input_layer_id=layer.id(),
        mask_layer_id=None,
        processing_overlap=ProcessingOverlap(
            ProcessingOverlapOptions.OVERLAP_IN_PERCENT, percentage=OVERLAP_PERCENT
        ),
        input_channels_mapping=mapping,
        postprocessing_dilate_erode_size=0,
        model=segmentor,
        pixel_classification__probability_threshold=0.0,
    )
    processor = MapProcessorSegmentation(
        rlayer=layer, vlayer_mask=None, map_canvas=MagicMock(), params=params
    )
    started = time.perf_counter()
    result = processor.run()
    seconds = time.perf_counter() - started
    if processor.get_result_img() is None:
        raise SystemExit(f"Deepness failed: {getattr(result, 'message', result)}")
    classes = processor.get_result_img()[0].astype(np.int16) - 1  # Deepness stores class + 1
    np.save(out, classes)
    print(json.dumps({"run_s": round(seconds, 2), "stride_px": processor.stride_px}))


def run_measured(command: list[str], env: dict | None = None) -> tuple[dict, str]:
    """A process's wall time and peak RSS (wait4 reaps it), and its stdout."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip
    out = proc.stdout.read()
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{' '.join(command[:4])} failed:\n{err[-3000:]}")
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}, out


def read_classes(path: Path) -> np.ndarray:
    from osgeo import gdal

    return gdal.Open(str(path)).ReadAsArray().astype(np.int16)


def single_pass(raster: str, model: Path) -> np.ndarray:
    """The model on the whole image at once (padded to a multiple of 32): no tiles, no seams."""
    import onnxruntime
    from osgeo import gdal

    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    mean, std = (np.array(json.loads(meta[f"standardization_{k}"]), np.float32).reshape(3, 1, 1)
                 for k in ("mean", "std"))  # fmt: skip
    image = (gdal.Open(raster).ReadAsArray()[:3].astype(np.float32) / 255 - mean) / std
    h, w = image.shape[1:]
    padded = np.zeros((1, 3, -(-h // 32) * 32, -(-w // 32) * 32), np.float32)
    padded[0, :, :h, :w] = image
    return session.run(None, {"image": padded})[0][0, :, :h, :w].argmax(0)


def border_mask(shape: tuple[int, int], stride: int, width: int = 4) -> np.ndarray:
    """Pixels within ``width`` of the lines where Deepness' tiles meet (its stride)."""
    mask = np.zeros(shape, bool)
    for axis, size in enumerate(shape):
        for line in range(stride, size, stride):
            index = [slice(None), slice(None)]
            index[axis] = slice(max(line - width, 0), line + width)
            mask[tuple(index)] = True
    return mask


def main() -> None:
    zipped = PEERS / "deepness-0.6.5.zip"
    if not DEMO.exists() or not zipped.exists():
        print(json.dumps({"error": "the bench needs ../shared/data and ../shared/peers"}))
        sys.exit(1)
    WORK.mkdir(parents=True, exist_ok=True)
    if not (WORK / "deepness").is_dir():
        with zipfile.ZipFile(zipped) as archive:
            archive.extractall(WORK)
    env = dict(os.environ, SEGMENT_PLUGIN_MODELS=str(WORK / "models"))
    model = WORK / "landcover.onnx"
    cli = [str(ENGINE), "-m", "segment_plugin.engine"]
    subprocess.run([*cli, "export-onnx", "landcover", "--output", str(model), "--overwrite",
                    "--stretch-of", str(DEMO)], check=True, capture_output=True)  # fmt: skip
    subprocess.run([*cli, "models", "--add", str(model), "--name", "landcover-onnx",
                    "--overwrite"], check=True, capture_output=True, env=env)  # fmt: skip
    mosaic = subprocess.run(
        [str(ENGINE), "-c", "from bench_segment import mosaic; print(mosaic(5000))"],
        check=True, capture_output=True, text=True, cwd=Path(__file__).parent,
    ).stdout.strip()  # fmt: skip
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "model": "bundled landcover, export-onnx (the same file in both)",
        "settings": f"tile {TILE}, batch {BATCH}, overlap: ours 192 px (Hann blend), "
        f"Deepness {OVERLAP_PERCENT} % (tiles pasted), native resolution (25 cm), no threshold or "
        "filter",
        "rasters": {},
    }
    runs = {}
    for name, raster in (("demo 1000x1000", str(DEMO)), ("mosaic 5000x5000", mosaic)):
        npy = WORK / f"deepness_{Path(raster).stem}.npy"
        theirs, out = run_measured(
            [sys.executable, __file__, "deepness", raster, str(model), str(npy)]
        )
        details = json.loads(out.strip().splitlines()[-1])
        classes, polygons = WORK / f"ours_{Path(raster).stem}.tif", WORK / "ours.gpkg"
        # at Deepness' tile and batch, not the card's
        ours, _ = run_measured(
            [*cli, "segment", raster, "--model", "landcover-onnx", "--output", str(classes),
             "--vector", str(polygons), "--overwrite", "--resolution", "0.25",
             "--tile", str(TILE), "--batch", str(BATCH)], env=env,
        )  # fmt: skip
        runs[name] = (raster, npy, classes, theirs, ours, details)
    # compared only now: this process's peak RSS would have been its children's starting point
    for name, (raster, npy, classes, theirs, ours, details) in runs.items():
        mine, deep = read_classes(classes), np.load(npy)
        h, w = min(mine.shape[0], deep.shape[0]), min(mine.shape[1], deep.shape[1])
        mine, deep = mine[:h, :w], deep[:h, :w]
        same = mine == deep
        near = border_mask((h, w), details["stride_px"])
        entry = {
            "deepness": {**theirs, "map_processor_s": details["run_s"]},
            "ours": ours,
            "wall_ratio_ours_over_deepness": round(ours["wall_s"] / theirs["wall_s"], 3),
            "rss_ratio_ours_over_deepness": round(ours["peak_rss_mb"] / theirs["peak_rss_mb"], 3),
            "agreement": round(float(same.mean()), 4),
            "agreement_near_deepness_tile_borders": round(float(same[near].mean()), 4),
            "agreement_elsewhere": round(float(same[~near].mean()), 4),
        }
        if raster == str(DEMO):  # small enough for the model in one pass: the seam-free map
            single = single_pass(raster, model)[:h, :w]
            entry["agreement_with_one_whole_image_pass"] = {
                "ours": round(float((mine == single).mean()), 4),
                "deepness": round(float((deep == single).mean()), 4),
            }
        report["rasters"][name] = entry
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    if len(sys.argv) in (5, 6) and sys.argv[1] == "deepness":
        deepness_child(*sys.argv[2:])
    else:
        main()
