"""ONNX models: our own exports and Deepness-format files, run by ONNX Runtime.

Needs only ``onnxruntime`` (no TensorFlow), so the inference-only engine runs them. A file either
carries our card (metadata key ``segment_plugin_card``, written by ``export-onnx``) or Deepness'
keys (``model_type``, ``class_names``, ``resolution`` in cm, ``tiles_size``,
``standardization_mean/std`` applied after scaling to 0–1), from which a card is derived. Deepness
runs PyTorch-style NCHW models; ours are exported the same way so that Deepness runs them too.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from segment_plugin.engine.errors import DependencyError, ModelError
from segment_plugin.engine.models.package import ClassInfo, ModelCard, Normalization
from segment_plugin.engine.normalize import DTYPE_RANGE, BandStats, without_stretch

CARD_KEY = "segment_plugin_card"
THREADS_VARIABLE = "SEGMENT_PLUGIN_THREADS"
# colours for classes a Deepness file names without any (background first, as in its outputs)
_PALETTE = (
    "#F5F5DC", "#D7191C", "#1A9641", "#2B83BA", "#FDAE61", "#984EA3", "#A6D96A", "#FFFF33",
    "#A65628", "#F781BF", "#999999", "#66C2A5",
)  # fmt: skip
_BAND_NAMES = ("red", "green", "blue", "nir")


def onnxruntime() -> Any:
    """The ``onnxruntime`` module, or a clear error naming what to install."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise DependencyError(
            f"ONNX Runtime is not installed in this engine environment ({exc}): "
            "set the engine up again (make setup)"
        ) from exc
    ort.set_default_logger_severity(4)  # its own log lines; a failure is raised, and ours says it
    return ort


def providers(device: str) -> list[str]:
    """ONNX Runtime execution providers: CUDA when present (unless ``--device cpu``), then CPU."""
    available = onnxruntime().get_available_providers()
    if device == "gpu" and "CUDAExecutionProvider" not in available:
        raise ModelError("--device gpu: ONNX Runtime has no CUDA provider in this environment")
    chosen = ["CPUExecutionProvider"]
    if device != "cpu" and "CUDAExecutionProvider" in available:
        chosen.insert(0, "CUDAExecutionProvider")
    return chosen


def _session(path: Path, device: str = "cpu") -> Any:
    ort = onnxruntime()
    options = ort.SessionOptions()
    # set for Dask's local worker processes: the machine's cores shared out, not each taking all
    threads = int(os.environ.get(THREADS_VARIABLE) or 0)
    if threads > 0:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=providers(device))
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        raise ModelError(f"{path.name}: not a readable ONNX model ({exc})") from exc


def _dim(value: Any) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


class OnnxModel:
    """A segmentation ONNX model that inference uses as it uses a Keras model.

    ``predict_on_batch`` takes normalised NHWC tiles and gives NHWC probabilities, whatever the
    file's layout; ``inputs[0].shape`` and ``outputs[0].shape`` are the NHWC shapes inference
    reads from a Keras model (fixed tile size, number of classes). One sigmoid channel becomes
    (1 − p, p), the two-class map Deepness makes of it. A model with several outputs is segmented
    with the first. An output smaller than its input (a model without padding) covers the
    centre of the tile, as in Deepness; its margin takes the nearest predicted pixel.
    """

    def __init__(self, path: Path, device: str = "cpu") -> None:
        self.path = path
        self.session = _session(path, device)
        self.device = "gpu" if "CUDA" in self.session.get_providers()[0] else "cpu"
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        layout = _layout(inp.shape, path)
        self.input_name = inp.name
        self.channels_first = layout["channels_first"]
        # a dynamic batch, unless the graph reshapes to a fixed one inside (its output says so)
        self.batch = _dim(inp.shape[0]) or _dim(out.shape[0])
        size, bands = layout["size"], layout["bands"]
        self.sigmoid = len(out.shape) == 3 or (self.channels_first and out.shape[1] == 1)
        classes = 2 if self.sigmoid else (out.shape[1] if self.channels_first else out.shape[-1])
        self.inputs = [SimpleNamespace(shape=(self.batch, size, size, bands))]
        self.outputs = [SimpleNamespace(shape=(self.batch, size, size, classes))]

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities (n, h, w, classes) for normalised tiles (n, h, w, bands)."""
        step = self.batch or len(batch)
        parts = [self._run(batch[i : i + step]) for i in range(0, len(batch), step)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _run(self, tiles: np.ndarray) -> np.ndarray:
        feed = np.ascontiguousarray(tiles.transpose(0, 3, 1, 2) if self.channels_first else tiles)
        try:
            out = self.session.run(None, {self.input_name: feed.astype(np.float32)})[0]
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise ModelError(
                f"{self.path.name} failed on {len(tiles)} tile(s) of {tiles.shape[1]} px: {exc}"
            ) from exc
        out = np.asarray(out)
        if out.ndim == 3:
            out = out[:, None] if self.channels_first else out[..., None]
        if self.channels_first:
            out = out.transpose(0, 2, 3, 1)
        if self.sigmoid:
            out = np.concatenate([1.0 - out, out], axis=-1)
        margin_h, margin_w = tiles.shape[1] - out.shape[1], tiles.shape[2] - out.shape[2]
        if margin_h or margin_w:
            if margin_h < 0 or margin_w < 0:
                raise ModelError(f"{self.path.name}: its output is larger than its input")
            pad = ((0, 0), (margin_h // 2, margin_h - margin_h // 2))
            out = np.pad(out, pad + ((margin_w // 2, margin_w - margin_w // 2), (0, 0)), "edge")
        return out


def _layout(shape: list[Any], path: Path) -> dict[str, Any]:
    """Channels first or last, bands and fixed size of an image input: NCHW or NHWC."""
    if len(shape) != 4:
        raise ModelError(f"{path.name}: its input {shape} is not a batch of images")
    first, last = _dim(shape[1]), _dim(shape[-1])
    channels_first = first is not None and first <= 16 and not (last is not None and last <= 16)
    if channels_first:
        return {"channels_first": True, "bands": first, "size": _dim(shape[2])}
    if last is None:
        raise ModelError(f"{path.name}: cannot tell the input bands from its shape {shape}")
    return {"channels_first": False, "bands": last, "size": _dim(shape[1])}


def read_card(path: Path) -> ModelCard:
    """The card of an ONNX file: the one it carries, or one derived from Deepness' metadata."""
    session = _session(path)
    meta = session.get_modelmeta().custom_metadata_map
    if CARD_KEY in meta:
        try:
            return ModelCard.from_dict(json.loads(meta[CARD_KEY]), source=f"{path.name} metadata")
        except json.JSONDecodeError as exc:
            raise ModelError(f"{path.name}: its {CARD_KEY} metadata is not JSON ({exc})") from exc
    return _card_from_deepness(path, session, {k: _json(v) for k, v in meta.items()})


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _card_from_deepness(path: Path, session: Any, meta: dict[str, Any]) -> ModelCard:
    model_type = meta.get("model_type")
    if model_type is not None and model_type != "Segmentor":
        raise ModelError(
            f"{path.name} is a Deepness {model_type} model, not a segmentation model "
            "(Segmentor): it cannot make a class map"
        )
    inp, outputs = session.get_inputs()[0], session.get_outputs()
    layout = _layout(inp.shape, path)
    out = outputs[0].shape
    if len(out) not in (3, 4) or (len(out) == 4 and not layout["channels_first"]):
        raise ModelError(
            f"{path.name}: its output {out} is not a per-pixel class map (N, classes, H, W), "
            "and it has no Deepness model_type saying it is a segmentation model"
        )
    size = layout["size"]
    out_size = _dim(out[-1])
    if size and out_size and not size // 2 <= out_size <= size:
        raise ModelError(
            f"{path.name}: its output ({out_size} px) is not a class map of its input "
            f"({size} px); not a segmentation model"
        )
    sigmoid = len(out) == 3 or out[1] == 1
    names = _class_names(meta.get("class_names", meta.get("names")))
    count = 2 if sigmoid else _dim(out[1])
    if count is None:
        raise ModelError(f"{path.name}: its output {out} does not say how many classes it has")
    if sigmoid and len(names) == 1:
        names = ["background", *names]
    if len(names) != count:
        names = [f"class {i}" for i in range(count)]
    classes = tuple(ClassInfo(i, n, _PALETTE[i % len(_PALETTE)]) for i, n in enumerate(names))
    bands = layout["bands"]
    tile = size or _dim(meta.get("tiles_size")) or 512
    weights = None
    threshold = meta.get("seg_thresh")
    if sigmoid and isinstance(threshold, (int, float)) and 0 < threshold < 1:
        # dividing (1 − p, p) by these and taking the larger is "p ≥ threshold" (Deepness' rule)
        weights = (1.0 - float(threshold), float(threshold))
    resolution = meta.get("resolution")
    notes = [f"Deepness-format ONNX model ({path.name})"]
    if len(outputs) > 1:
        notes.append(f"it has {len(outputs)} outputs: the class map is made from the first")
    if sigmoid:
        cut = weights[1] if weights else 0.5
        notes.append(f"one sigmoid channel: its class where the probability is at least {cut:g}")
    return ModelCard(
        name=path.stem,
        classes=classes,
        bands=_band_names(bands),
        normalization=_deepness_normalization(meta, bands, path),
        input_dtype="uint8",
        resolution_m=float(resolution) / 100 if isinstance(resolution, (int, float)) else None,
        tile_size=tile,
        architecture="onnx",
        description="; ".join(notes) + ".",
        class_weights=weights,
    )


def _band_names(count: int) -> tuple[str, ...]:
    return tuple(_BAND_NAMES[i] if i < len(_BAND_NAMES) else f"band {i + 1}" for i in range(count))


def _class_names(value: Any) -> list[str]:
    """Deepness' ``class_names``: ``{"0": name, ...}`` or a list of those, one per output."""
    if isinstance(value, list):
        value = value[0] if value else {}
    if not isinstance(value, dict):
        return []
    try:
        return [str(v) for _, v in sorted(value.items(), key=lambda kv: int(kv[0]))]
    except ValueError:
        return []


def _deepness_normalization(meta: dict[str, Any], bands: int, path: Path) -> Normalization:
    """Deepness scales by 1/255, then standardises: ``(x/255 − m)/s`` is ``(x − 255m)/(255s)``."""
    mean, std = meta.get("standardization_mean"), meta.get("standardization_std")
    if mean is None or std is None:
        return Normalization(method="scale", scale=1 / 255, offset=0.0)
    try:
        mean = [float(m) * 255 for m in mean][:bands]
        std = [float(s) * 255 for s in std][:bands]
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{path.name}: unreadable standardization metadata ({exc})") from exc
    if len(mean) != bands or len(std) != bands or min(std) <= 0:
        raise ModelError(f"{path.name}: standardization needs one mean and one std > 0 per band")
    return Normalization(method="meanstd", mean=tuple(mean), std=tuple(std))


def deepness_metadata(
    card: ModelCard, overlap_percent: int, stretch: BandStats | None = None
) -> dict[str, str]:
    """Deepness' metadata keys for ``card``, values JSON-encoded as Deepness reads them.

    Deepness standardises ``(x/255 − mean)/std`` per band, an affine map of the raw values, as
    ``scale`` and ``meanstd`` are. A percentile stretch (``percentile``, ``stretch``) depends on
    each raster's statistics, which Deepness does not compute: refused, unless ``stretch`` gives
    one raster's, which are then written in (without the stretch's clipping at 0 and 1).
    """
    per_raster = card.normalization.per_raster
    if per_raster and stretch is None:
        raise ModelError(
            f"model {card.name!r} stretches each raster by its own band percentiles, which "
            "Deepness cannot express (it scales by 1/255 and standardises per band): export it "
            "with --no-deepness, or with --stretch-of RASTER to write that raster's stretch in"
        )
    slope, intercept = _affine(card, stretch if per_raster else None)
    stds = 1 / (255 * slope)
    mean, stds = [float(v) for v in -intercept * stds], [float(v) for v in stds]
    meta = {
        "model_type": "Segmentor",
        "class_names": {str(i): c.name for i, c in enumerate(card.classes)},
        "tiles_size": card.tile_size,
        "tiles_overlap": overlap_percent,
        "standardization_mean": mean,
        "standardization_std": stds,
        "seg_thresh": 0.0,
        "seg_small_segment": 0,
    }
    if card.resolution_m is not None:
        meta["resolution"] = round(card.resolution_m * 100, 3)
    return {k: json.dumps(v) for k, v in meta.items()}


def _affine(card: ModelCard, stretch: BandStats | None) -> tuple[np.ndarray, np.ndarray]:
    """Per band (a, b) such that the model's input is ``a·x + b`` for raw values x."""
    norm, bands = card.normalization, len(card.bands)
    if stretch is not None:
        span = stretch.span
        if norm.method == "percentile":
            return 1 / span, -stretch.low / span
        top = DTYPE_RANGE.get(card.input_dtype, (0.0, 255.0))[1]
        a, b = _affine(without_stretch(card), None)  # after the stretch to 0..top
        return a * top / span, b - a * top * stretch.low / span
    if norm.method == "scale":
        return np.full(bands, norm.scale), np.full(bands, norm.offset)
    std = np.asarray(norm.std, np.float64)
    return 1 / std, -np.asarray(norm.mean, np.float64) / std


def card_for_export(card: ModelCard, weights_in_graph: bool) -> ModelCard:
    """The card an exported file carries: class weights undone in its graph are not undone again."""
    return replace(card, class_weights=None) if weights_in_graph else card
