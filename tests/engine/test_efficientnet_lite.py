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


@pytest.fixture(scope="module")
def state():
    return efficientnet_lite.read_legacy_pth(efficientnet_lite.weights_path())


def test_checkpoint_reads_as_a_state_dict(state):
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state["_fc.weight"].shape == (1000, 1280)  # the ImageNet classifier, not used
    assert all(v.dtype == np.float32 for k, v in state.items() if not k.endswith("tracked"))
    # the 16 blocks' kernel sizes are the ones the encoder is built with
    kernels = [state[f"_blocks.{i}._depthwise_conv.weight"].shape[-1] for i in range(16)]
    assert kernels == [k for k, *_ in efficientnet_lite._blocks()]


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


def test_every_encoder_layer_gets_its_weights(state):
    model = build_model("efficientnet_lite0_unet", 3, 5, pretrained=False)
    assert efficientnet_lite.load_imagenet_weights(model, state) == 2 + 16 * 6 - 2
    stem = model.get_layer("stem").kernel.numpy()
    assert np.array_equal(stem, state["_conv_stem.weight"].transpose(2, 3, 1, 0))
    dw = model.get_layer("block15_dw").kernel.numpy()
    torch_dw = state["_blocks.15._depthwise_conv.weight"]  # (channels, 1, 3, 3)
    assert np.array_equal(dw[..., 0], torch_dw[:, 0].transpose(1, 2, 0))


@pytest.mark.parametrize("bands", [1, 4])
def test_other_band_counts_start_from_the_rgb_stem(state, bands):
    model = build_model("efficientnet_lite0_unet", bands, 5)
    stem = model.get_layer("stem").kernel.numpy()
    rgb = state["_conv_stem.weight"].transpose(2, 3, 1, 0)
    assert stem.shape[2] == bands
    # a grey image, or the same value in every band, gives the stem RGB's response to grey
    assert np.allclose(stem.sum(axis=2), rgb.sum(axis=2), atol=1e-5)


def test_batch_norm_statistics_match_real_imagery():
    """Ported right, each layer's activations on aerial images have about the mean and variance
    its batch norm learnt on ImageNet. Measured on these 8 images, the distance summed over four
    layers (median over channels of |mean z| and |log std z|, z the batch-normalised
    activation): 1.11 as ported; 1.65 with kernels' height and width swapped; 1.58 without the
    input's mean subtracted; 2.13 with the input scaled twice too strongly."""
    images = sorted((SHARED / "landcover" / "dubai").glob("tile_*/image_part_001.jpg"))
    if not images:
        pytest.skip("../shared/data is absent")
    x = np.stack(
        [rasterio.open(p).read(out_shape=(3, 256, 256)).transpose(1, 2, 0) / 255 for p in images]
    ).astype("float32")
    keras = _keras()
    model = build_model("efficientnet_lite0_unet", 3, 5)
    names = ["stem", "block3_project", "block8_dw", "block15_project"]
    outputs = keras.Model(model.inputs, [model.get_layer(n).output for n in names])(x)
    distance = 0.0
    for name, out in zip(names, outputs):
        bn = model.get_layer(f"{name}_bn")
        z = (np.asarray(out) - bn.moving_mean.numpy()) / np.sqrt(bn.moving_variance.numpy() + 1e-3)
        distance += np.median(np.abs(z.mean(axis=(0, 1, 2))))
        distance += np.median(np.abs(np.log(z.std(axis=(0, 1, 2)))))
    assert distance < 1.35
