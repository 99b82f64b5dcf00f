"""A Keras model package as ONNX: Keras' own export (tf2onnx), our card and Deepness' keys inside.

The graph takes NCHW tiles and gives NCHW probabilities, the layout Deepness (and most ONNX
tools, coming from PyTorch) feed. Exported for other tools, the class weights' bias is undone in
the graph itself (divide by the weights, renormalise), so Deepness' argmax is the class map
``segment`` writes; a package's own ``model.onnx`` keeps the raw network, as ``model.keras``
does, so that ``--keep-class-weights`` still works on it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from segment_plugin.engine import outputs
from segment_plugin.engine.errors import DependencyError
from segment_plugin.engine.models.onnx_model import (
    CARD_KEY,
    card_for_export,
    deepness_metadata,
)
from segment_plugin.engine.models.package import ONNX_FILE, ModelPackage
from segment_plugin.engine.normalize import BandStats
from segment_plugin.engine.tiling import default_overlap

OPSET = 17


def channels_first_graph(model: Any, class_weights: Any) -> Any:
    """``model`` behind NCHW input and output (and the class weights undone, if given)."""
    import keras

    bands = model.inputs[0].shape[-1]
    image = keras.Input((bands, None, None), name="image")
    probs = model(keras.layers.Permute((2, 3, 1))(image))
    if class_weights is not None:
        probs = probs / np.asarray(class_weights, np.float32)
        probs = probs / keras.ops.sum(probs, axis=-1, keepdims=True)
    return keras.Model(image, keras.layers.Permute((3, 1, 2), name="probabilities")(probs))


def export_onnx(
    package: ModelPackage,
    output: Path,
    weights_in_graph: bool = True,
    deepness: bool = True,
    stretch: BandStats | None = None,
) -> dict[str, Any]:
    """Write ``package`` as one ONNX file at ``output`` (atomically) and describe it.

    ``stretch``: one raster's statistics, for Deepness' keys of a model that stretches each
    raster (``deepness_metadata``).
    """
    weights = package.card.class_weights if weights_in_graph else None
    card = card_for_export(package.card, weights is not None)
    overlap = round(100 * default_overlap(card.tile_size) / card.tile_size)
    metadata = deepness_metadata(card, overlap, stretch) if deepness else {}
    metadata[CARD_KEY] = json.dumps(json.loads(card.to_json()))
    try:
        import onnx
    except ImportError as exc:
        raise DependencyError(f"the onnx package is not installed ({exc})") from exc
    graph = channels_first_graph(package.load_model("keras"), weights)
    graph(np.zeros((1, len(card.bands), card.input_multiple, card.input_multiple), np.float32))
    with outputs.committed([output]) as (partial,):
        graph.export(str(partial), format="onnx", verbose=False, opset_version=OPSET)
        proto = onnx.load(str(partial))
        for key, value in metadata.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.producer_name = "segment_plugin"
        onnx.save(proto, str(partial))
    return {
        "output": str(output),
        "bytes": os.path.getsize(output),
        "model": card.name,
        "deepness": deepness,
        "class_weights_in_graph": weights is not None,
    }


def add_onnx_to_package(package: ModelPackage) -> dict[str, Any]:
    """The package's own ``model.onnx`` beside ``model.keras`` (the raw network, our card)."""
    return export_onnx(package, package.path / ONNX_FILE, weights_in_graph=False, deepness=False)
