"""COCO run-length encoding: hand-checked values, exact round trips (hypothesis), export-rle."""

from __future__ import annotations

import json

import numpy as np
import rasterio
from conftest import write_raster
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from segment_plugin.engine import cli
from segment_plugin.engine.rle import (
    RunBuilder,
    compress,
    counts_to_string,
    decode,
    encode,
    string_to_counts,
)


def test_hand_computed_values():
    mask = np.array([[0, 1], [1, 1]], bool)  # column-major: 0,1,1,1
    assert encode(mask) == {"size": [2, 2], "counts": [1, 3]}
    assert encode(np.ones((2, 3), bool))["counts"] == [0, 6]  # starts with an empty zero-run
    assert counts_to_string([1, 3]) == "13"
    assert counts_to_string([5, 2, 3, 1]) == "523O"  # 1 - 2 = -1 → one 5-bit group 0x1f → 'O'
    assert counts_to_string([100]) == "T3"  # 100 = 4 + 3·32: '4'|0x20 then '3'


masks = arrays(bool, st.tuples(st.integers(1, 40), st.integers(1, 40)))


@settings(max_examples=300, deadline=None)
@given(masks)
def test_round_trip_both_forms(mask):
    rle = encode(mask)
    assert np.array_equal(decode(rle), mask)
    packed = compress(rle)
    assert isinstance(packed["counts"], str)
    assert string_to_counts(packed["counts"]) == rle["counts"]
    assert np.array_equal(decode(packed), mask)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 10**7), min_size=1, max_size=60))
def test_string_codec_is_exact_for_any_counts(counts):
    assert string_to_counts(counts_to_string(counts)) == counts


@settings(max_examples=100, deadline=None)
@given(masks, st.integers(1, 17))
def test_builder_fed_in_pieces_equals_one_piece(mask, piece):
    flat = mask.ravel(order="F")
    builder = RunBuilder()
    for start in range(0, flat.size, piece):
        builder.add(flat[start : start + piece])
    assert builder.counts() == encode(mask)["counts"]


def test_export_rle_cli(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 4, (1, 37, 1300)).astype(np.uint8)  # wider than one column strip
    data[0, :5, :5] = 255
    raster = write_raster(tmp_path / "c.tif", data, nodata=255)
    with rasterio.open(raster, "r+") as ds:
        ds.update_tags(
            CLASS_0="background", CLASS_1="building", CLASS_2="woodland", CLASS_3="water"
        )
    out = tmp_path / "masks.json"
    assert cli.main(["export-rle", str(raster), "--output", str(out)]) == 0
    document = json.loads(out.read_text())
    assert document["size"] == [37, 1300]
    assert [c["class"] for c in document["classes"]] == [
        "background",
        "building",
        "woodland",
        "water",
    ]
    for entry in document["classes"]:
        mask = decode(entry["rle"])
        assert np.array_equal(mask, data[0] == entry["class_id"])
        assert entry["pixels"] == mask.sum()
    assert cli.main(["export-rle", str(raster), "--output", str(out)]) == 2  # exists
    assert "exists; pass --overwrite" in capsys.readouterr().err
