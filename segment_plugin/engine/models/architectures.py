"""Segmentation networks built from standard Keras 3 layers only.

Standard layers mean a saved ``model.keras`` loads under ``safe_mode=True`` with any Keras backend
(TensorFlow here, torch or JAX on a GPU machine) and needs no custom code. All are fully
convolutional: any tile size that is a multiple of ``2 ** depth``, any number of input bands,
any number of classes; the last layer is a softmax over classes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# The pretrained ones last: EfficientNet-Lite encoders (ImageNet weights) with a U-Net decoder.
# Named here, not taken from efficientnet_lite.VARIANTS: that module imports numpy, and the CLI
# imports this one, so `segment-plugin info` could no longer report an engine environment that
# lacks numpy (tests/qgis/test_engine_setup.py); test_architectures checks the two agree.
PRETRAINED = ("efficientnet_lite0_unet", "efficientnet_lite1_unet")
ARCHITECTURES = ("separable_unet", "unet", "unet_aspp", *PRETRAINED)


def _keras() -> Any:
    from segment_plugin.engine.models.package import _keras as load

    return load()


def _conv_block(x: Any, filters: int, name: str) -> Any:
    """Two 3×3 convolutions with batch norm and ReLU (classic U-Net)."""
    layers = _keras().layers
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def _separable_residual_block(x: Any, filters: int, name: str) -> Any:
    """Two depthwise-separable 3×3 convolutions with a 1×1 projection shortcut (cheap on CPU)."""
    layers = _keras().layers
    shortcut = layers.Conv2D(filters, 1, padding="same", use_bias=False, name=f"{name}_proj")(x)
    shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    for i in (1, 2):
        x = layers.SeparableConv2D(
            filters, 3, padding="same", use_bias=False, name=f"{name}_sep{i}"
        )(x)
        x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        if i == 1:
            x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    x = layers.Add(name=f"{name}_add")([x, shortcut])
    return layers.Activation("relu", name=f"{name}_out")(x)


def _aspp(x: Any, filters: int, name: str, rates: tuple[int, ...] = (1, 2, 4, 8)) -> Any:
    """Atrous spatial pyramid pooling: parallel dilated convolutions, concatenated and fused."""
    layers = _keras().layers
    branches = []
    for rate in rates:
        size = 1 if rate == 1 else 3
        b = layers.Conv2D(
            filters,
            size,
            padding="same",
            dilation_rate=rate,
            use_bias=False,
            name=f"{name}_r{rate}",
        )(x)
        b = layers.BatchNormalization(name=f"{name}_r{rate}_bn")(b)
        branches.append(layers.Activation("relu", name=f"{name}_r{rate}_relu")(b))
    x = layers.Concatenate(name=f"{name}_concat")(branches)
    x = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_fuse")(x)
    x = layers.BatchNormalization(name=f"{name}_fuse_bn")(x)
    return layers.Activation("relu", name=f"{name}_fuse_relu")(x)


def _unet(
    bands: int,
    classes: int,
    base: int,
    depth: int,
    block: Callable[[Any, int, str], Any],
    bottleneck: Callable[[Any, int, str], Any],
    name: str,
) -> Any:
    keras = _keras()
    layers = keras.layers
    inputs = keras.Input((None, None, bands), name="image")
    skips = []
    x = inputs
    for level in range(depth):
        x = block(x, base * 2**level, f"enc{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = bottleneck(x, base * 2**depth, "bottleneck")
    for level in reversed(range(depth)):
        # a learned 2×2 up-convolution (as in the original U-Net); Keras' bilinear UpSampling2D
        # breaks when one model is traced for a second input size
        x = layers.Conv2DTranspose(base * 2**level, 2, strides=2, name=f"up{level}")(x)
        x = layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = block(x, base * 2**level, f"dec{level}")
    outputs = layers.Conv2D(classes, 1, activation="softmax", dtype="float32", name="classes")(x)
    return keras.Model(inputs, outputs, name=name)


def _efficientnet_unet(arch: str, bands: int, classes: int, base: int, pretrained: bool) -> Any:
    """EfficientNet-Lite encoder (ImageNet weights) with a light separable U-Net decoder.

    The decoder climbs from stride 32 to full resolution; each step upsamples (nearest
    neighbour, then a convolution — no transposed convolution, hence no checkerboard), joins the
    encoder's features of that resolution (the image itself at the last step) and refines them
    with a separable residual block of ``base * 8`` down to ``base`` filters.
    """
    from segment_plugin.engine.models import efficientnet_lite

    keras = _keras()
    layers = keras.layers
    inputs = keras.Input((None, None, bands), name="image")
    *skips, x = efficientnet_lite.encoder(inputs, arch)
    skips = [inputs, *skips]
    for level in reversed(range(len(skips))):
        filters = base * 2 ** max(level - 1, 0)
        x = layers.UpSampling2D(2, interpolation="nearest", name=f"up{level}")(x)
        x = layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = _separable_residual_block(x, filters, f"dec{level}")
    outputs = layers.Conv2D(classes, 1, activation="softmax", dtype="float32", name="classes")(x)
    model = keras.Model(inputs, outputs, name=arch)
    if pretrained:
        efficientnet_lite.load_imagenet_weights(model, arch)
    return model


def build_model(
    arch: str,
    bands: int,
    classes: int,
    base: int | None = None,
    depth: int = 4,
    pretrained: bool = True,
) -> Any:
    """Build ``separable_unet`` (default for CPU), ``unet``, ``unet_aspp`` or a pretrained one.

    ``pretrained`` only concerns the ``efficientnet_lite*_unet``: their encoder starts from
    ImageNet weights (the others always start from random weights).
    """
    if arch in PRETRAINED:
        return _efficientnet_unet(arch, bands, classes, base or 16, pretrained)
    if arch == "separable_unet":
        return _unet(
            bands,
            classes,
            base or 16,
            depth,
            _separable_residual_block,
            _separable_residual_block,
            arch,
        )
    if arch == "unet":
        return _unet(bands, classes, base or 32, depth, _conv_block, _conv_block, arch)
    if arch == "unet_aspp":
        return _unet(bands, classes, base or 32, depth, _conv_block, _aspp, arch)
    raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")


def initial_weights(arch: str) -> str:
    """Where a new model of ``arch`` starts from, as its card records it."""
    if arch in PRETRAINED:
        from segment_plugin.engine.models.efficientnet_lite import VARIANTS

        return VARIANTS[arch].weights_source
    return "random"


def input_multiple(depth: int = 4, arch: str = "separable_unet") -> int:
    """Tile sizes must be multiples of this: one halving per level.

    The EfficientNet halves once per skip level, whatever ``depth`` says.
    """
    if arch in PRETRAINED:
        from segment_plugin.engine.models.efficientnet_lite import skip_blocks

        return 2 ** len(skip_blocks(arch))
    return 2**depth
