"""The pretrained encoder: its checkpoint read safely, its weights ported right."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import rasterio
from conftest import SHARED

from segment_plugin.engine.models import efficientnet_lite
from segment_plugin.engine.models.architectures import build_model
from segment_plugin.engine.models.package import _keras

LITE0, LITE1 = "efficientnet_lite0_unet", "efficientnet_lite1_unet"


@pytest.fixture(scope="module")
def states():
    return {
        arch: efficientnet_lite.read_legacy_pth(efficientnet_lite.weights_path(arch))
        for arch in (LITE0, LITE1)
    }


@pytest.fixture(scope="module")
def state(states):
    return states[LITE0]


@pytest.mark.parametrize(("arch", "count"), [(LITE0, 16), (LITE1, 21)])
def test_checkpoint_reads_as_a_state_dict_of_the_blocks_built(states, arch, count):
    state = states[arch]
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state[f"_blocks.{count - 1}._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert f"_blocks.{count}._project_conv.weight" not in state
    assert state["_fc.weight"].shape == (1000, 1280)  # the ImageNet classifier, not used
    assert all(v.dtype == np.float32 for k, v in state.items() if not k.endswith("tracked"))
    # every block's kernel size, stride-free shapes and channels are the ones built
    built = efficientnet_lite.blocks(arch)
    assert len(built) == count
    for i, (kernel, _, expansion, channels, out) in enumerate(built):
        assert state[f"_blocks.{i}._depthwise_conv.weight"].shape == (
            channels * expansion,
            1,
            kernel,
            kernel,
        )
        assert state[f"_blocks.{i}._project_conv.weight"].shape == (out, channels * expansion, 1, 1)


def test_skips_are_the_last_block_at_each_resolution():
    assert efficientnet_lite.skip_blocks(LITE0) == [0, 2, 4, 10, 15]
    assert efficientnet_lite.skip_blocks(LITE1) == [0, 3, 6, 14, 20]


def test_checkpoint_with_code_is_refused(tmp_path):
    """A .pth whose pickle names anything but tensors and dicts is refused, not run."""
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {}):
            pickle.dump(header, f)
        f.write(b"cos\nsystem\n(S'touch " + str(tmp_path / "ran").encode() + b"'\ntR.")
    with pytest.raises(pickle.UnpicklingError, match="refusing os.system"):
        efficientnet_lite.read_legacy_pth(path)
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize(("arch", "count"), [(LITE0, 16), (LITE1, 21)])
def test_every_encoder_layer_gets_its_weights(states, arch, count):
    state = states[arch]
    model = build_model(arch, 3, 5, pretrained=False)
    assert efficientnet_lite.load_imagenet_weights(model, arch, state) == 2 + count * 6 - 2
    stem = model.get_layer("stem").kernel.numpy()
    assert np.array_equal(stem, state["_conv_stem.weight"].transpose(2, 3, 1, 0))
    last = count - 1
    dw = model.get_layer(f"block{last}_dw").kernel.numpy()
    torch_dw = state[f"_blocks.{last}._depthwise_conv.weight"]  # (channels, 1, 3, 3)
    assert np.array_equal(dw[..., 0], torch_dw[:, 0].transpose(1, 2, 0))


@pytest.mark.parametrize("bands", [1, 4])
def test_other_band_counts_start_from_the_rgb_stem(state, bands):
    model = build_model(LITE0, bands, 5)
    stem = model.get_layer("stem").kernel.numpy()
    rgb = state["_conv_stem.weight"].transpose(2, 3, 1, 0)
    assert stem.shape[2] == bands
    # a grey image, or the same value in every band, gives the stem RGB's response to grey
    assert np.allclose(stem.sum(axis=2), rgb.sum(axis=2), atol=1e-5)


@pytest.mark.parametrize(("arch", "count"), [(LITE0, 16), (LITE1, 21)])
def test_batch_norm_statistics_match_real_imagery(arch, count):
    """Ported right, each layer's activations on aerial images have about the mean and variance
    its batch norm learnt on ImageNet. Measured on these 8 images, the distance summed over four
    layers (median over channels of |mean z| and |log std z|, z the batch-normalised
    activation): Lite0 1.11 and Lite1 0.99 as ported; for Lite0, 1.65 with kernels' height and
    width swapped, 1.58 without the input's mean subtracted, 2.13 with the input scaled twice
    too strongly."""
    images = sorted((SHARED / "landcover" / "dubai").glob("tile_*/image_part_001.jpg"))
    if not images:
        pytest.skip("../shared/data is absent")
    x = np.stack(
        [rasterio.open(p).read(out_shape=(3, 256, 256)).transpose(1, 2, 0) / 255 for p in images]
    ).astype("float32")
    keras = _keras()
    model = build_model(arch, 3, 5)
    names = ["stem", "block3_project", "block8_dw", f"block{count - 1}_project"]
    outputs = keras.Model(model.inputs, [model.get_layer(n).output for n in names])(x)
    distance = 0.0
    for name, out in zip(names, outputs):
        bn = model.get_layer(f"{name}_bn")
        z = (np.asarray(out) - bn.moving_mean.numpy()) / np.sqrt(bn.moving_variance.numpy() + 1e-3)
        distance += np.median(np.abs(z.mean(axis=(0, 1, 2))))
        distance += np.median(np.abs(np.log(z.std(axis=(0, 1, 2)))))
    assert distance < 1.35
