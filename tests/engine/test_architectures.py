"""Architectures: any bands, any classes, softmax output, saved and loaded safely."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_card

from segment_plugin.engine.models.architectures import ARCHITECTURES, build_model, input_multiple
from segment_plugin.engine.models.package import ModelPackage, save_package


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize(("bands", "classes"), [(1, 2), (4, 7)])
def test_shapes_and_softmax(arch, bands, classes):
    model = build_model(arch, bands, classes, base=4, depth=3)
    m = input_multiple(3, arch)
    x = np.random.default_rng(0).random((2, 3 * m, 4 * m, bands)).astype("float32")
    y = np.asarray(model.predict_on_batch(x))
    assert y.shape == (2, 3 * m, 4 * m, classes)
    assert np.allclose(y.sum(-1), 1.0, atol=1e-4)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_saved_model_loads_in_safe_mode_and_predicts_the_same(tmp_path, arch):
    from dataclasses import replace

    model = build_model(arch, 3, 5, base=4, depth=2)
    m = input_multiple(2, arch)
    card = replace(tiny_card(), architecture=arch, input_multiple=m)
    save_package(model, card, tmp_path / arch)
    loaded = ModelPackage.open(tmp_path / arch).load_model()
    x = np.random.default_rng(1).random((1, 2 * m, 2 * m, 3)).astype("float32")
    assert np.allclose(model.predict_on_batch(x), loaded.predict_on_batch(x), atol=1e-5)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_one_model_takes_several_tile_sizes(arch):
    """Inference, evaluation and fine-tuning call the same model with different sizes."""
    model = build_model(arch, 3, 5, base=4, depth=2)
    m = input_multiple(2, arch)
    for size in (16 * m, 8 * m, 12 * m):
        x = np.zeros((1, size, size, 3), "float32")
        assert np.asarray(model.predict_on_batch(x)).shape == (1, size, size, 5)


def test_unknown_architecture():
    with pytest.raises(ValueError, match="choose one of separable_unet, unet, unet_aspp"):
        build_model("resnet", 3, 5)


def test_separable_unet_is_the_small_one():
    sizes = {arch: build_model(arch, 3, 5).count_params() for arch in ARCHITECTURES}
    assert sizes["separable_unet"] * 10 < sizes["unet"] < sizes["unet_aspp"]


def test_the_pretrained_architectures_are_the_encoder_variants():
    # listed twice on purpose (architectures must import without numpy); they must agree
    from segment_plugin.engine.models.architectures import PRETRAINED
    from segment_plugin.engine.models.efficientnet_lite import VARIANTS

    assert PRETRAINED == tuple(VARIANTS)
