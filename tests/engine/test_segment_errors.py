"""Bad input to `segment-plugin segment`: one clear line, exit code != 0, nothing left behind."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import assert_one_error, cancel_mid_run, no_outputs, scene, write_raster

from segment_plugin.engine import cli


@pytest.fixture
def rgb(tmp_path):
    return write_raster(tmp_path / "rgb.tif", scene(64, 64))


def segment_cli(capsys, *args):
    code = cli.main(["segment", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines()


def test_missing_file(capsys, tmp_path, tiny_model):
    code, lines = segment_cli(
        capsys, tmp_path / "nope.tif", "--output", tmp_path / "out.tif", "--model", tiny_model
    )
    assert_one_error(code, lines, "input not found")


def test_not_a_raster(capsys, tmp_path, tiny_model):
    text = tmp_path / "notes.tif"
    text.write_text("this is not an image")
    code, lines = segment_cli(capsys, text, "--output", tmp_path / "out.tif", "--model", tiny_model)
    assert_one_error(code, lines, "is not a raster GDAL can read")
    assert no_outputs(tmp_path)


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--tile", "100000"], "GB of tiles and blended probabilities, more than half"),
        (["--tile", "4096", "--batch", "64"], "lower --batch, then --tile"),
        (["--resolution", "0.001"], "250× finer"),
    ],
)
def test_absurd_tile_batch_or_resolution_is_refused_with_the_numbers(
    capsys, tmp_path, rgb, tiny_model, args, expected
):
    code, lines = segment_cli(
        capsys, rgb, "--output", tmp_path / "out.tif", "--model", tiny_model, *args
    )
    assert_one_error(code, lines, expected)
    assert no_outputs(tmp_path)


def test_output_that_is_a_folder(capsys, tmp_path, rgb, tiny_model):
    (tmp_path / "out.tif").mkdir()
    code, lines = segment_cli(capsys, rgb, "--output", tmp_path / "out.tif", "--model", tiny_model)
    assert_one_error(code, lines, "is a folder; give a file name in it")


def test_band_out_of_range(capsys, tmp_path, rgb, tiny_model):
    code, lines = segment_cli(
        capsys, rgb, "--output", tmp_path / "out.tif", "--model", tiny_model, "--bands", "1,2,5"
    )
    assert_one_error(code, lines, "band 5 is out of range: the input has bands 1..3")


def test_wrong_number_of_bands_listed(capsys, tmp_path, rgb, tiny_model):
    code, lines = segment_cli(
        capsys, rgb, "--output", tmp_path / "out.tif", "--model", tiny_model, "--bands", "1,2"
    )
    assert_one_error(code, lines, "--bands lists 2 bands but model 'tiny' takes 3")


def test_fewer_bands_than_the_model_needs(capsys, tmp_path, tiny_model):
    pan = write_raster(tmp_path / "pan.tif", scene(64, 64, bands=1))
    code, lines = segment_cli(capsys, pan, "--output", tmp_path / "out.tif", "--model", tiny_model)
    assert_one_error(code, lines, "has 1 usable band(s) but model 'tiny' needs 3")


def test_all_nodata(capsys, tmp_path, tiny_model):
    empty = write_raster(tmp_path / "empty.tif", np.zeros((3, 32, 32), np.uint8), nodata=0)
    code, lines = segment_cli(
        capsys, empty, "--output", tmp_path / "out.tif", "--model", tiny_model
    )
    assert_one_error(code, lines, "holds only nodata pixels")
    assert no_outputs(tmp_path)


def test_one_pixel_raster(capsys, tmp_path, tiny_model):
    dot = write_raster(tmp_path / "dot.tif", np.full((3, 1, 1), 9, np.uint8))
    code, lines = segment_cli(capsys, dot, "--output", tmp_path / "out.tif", "--model", tiny_model)
    assert_one_error(code, lines, "is 1×1 pixels; at least 4×4 are needed")


def test_unwritable_output_folder(capsys, rgb, tiny_model):
    code, lines = segment_cli(capsys, rgb, "--output", "/proc/out.tif", "--model", tiny_model)
    assert_one_error(code, lines, "cannot write in /proc")


def test_missing_output_folder(capsys, tmp_path, rgb, tiny_model):
    code, lines = segment_cli(
        capsys, rgb, "--output", tmp_path / "no" / "out.tif", "--model", tiny_model
    )
    assert_one_error(code, lines, "does not exist")


def test_output_is_input(capsys, rgb, tiny_model):
    before = rgb.read_bytes()
    code, lines = segment_cli(capsys, rgb, "--output", rgb, "--model", tiny_model, "--overwrite")
    assert_one_error(code, lines, "is the input")
    assert rgb.read_bytes() == before


def test_existing_output_needs_overwrite(capsys, tmp_path, rgb, tiny_model):
    out = tmp_path / "out.tif"
    out.write_text("keep me")
    code, lines = segment_cli(capsys, rgb, "--output", out, "--model", tiny_model)
    assert_one_error(code, lines, "exists; pass --overwrite")
    assert out.read_text() == "keep me"
    code, _ = segment_cli(capsys, rgb, "--output", out, "--model", tiny_model, "--overwrite")
    assert code == 0 and out.read_bytes()[:2] in (b"II", b"MM")


def test_unknown_model(capsys, tmp_path, rgb):
    code, lines = segment_cli(
        capsys, rgb, "--output", tmp_path / "out.tif", "--model", "no-such-model"
    )
    assert_one_error(code, lines, "unknown model 'no-such-model'")


def test_overlap_not_smaller_than_tile(capsys, tmp_path, rgb, tiny_model):
    code, lines = segment_cli(
        capsys,
        rgb,
        "--output",
        tmp_path / "out.tif",
        "--model",
        tiny_model,
        "--tile",
        "32",
        "--overlap",
        "32",
    )
    assert_one_error(code, lines, "overlap (32) must be smaller than the tile (32)")


def test_gpu_requested_without_gpu(capsys, tmp_path, rgb, tiny_model):
    code, lines = segment_cli(
        capsys, rgb, "--output", tmp_path / "out.tif", "--model", tiny_model, "--device", "gpu"
    )
    assert_one_error(code, lines, "Keras (tensorflow) sees no GPU")
    assert no_outputs(tmp_path)


def test_cancel_leaves_no_partial_file(tmp_path, tiny_model):
    """SIGTERM mid-run (what QGIS's Cancel sends): exit 130, no output and no temporary file."""
    raster = write_raster(tmp_path / "big.tif", np.tile(scene(128, 128), (1, 8, 8)))
    out = tmp_path / "out.tif"
    command = [
        sys.executable,
        "-m",
        "segment_plugin.engine",
        "segment",
        str(raster),
        "--output",
        str(out),
    ]
    command += ["--model", str(tiny_model), "--tile", "64", "--batch", "1", "--progress", "json"]
    code, seconds, rest = cancel_mid_run(command)
    assert code == 130 and seconds < 10
    assert rest[-1] == {"event": "end", "status": "cancelled", "exit_code": 130}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tif"]


def test_nan_and_inf_are_nodata_and_do_not_poison_the_statistics(tmp_path, tiny_model):
    import rasterio

    values = scene(96, 96).astype(np.float32)
    clean = write_raster(tmp_path / "clean.tif", values)
    holed = values.copy()
    holed[:, 10:30, 10:30] = np.nan
    holed[:, 70, 70] = np.inf  # one inf made the whole-raster percentiles inf: all class 0
    dirty = write_raster(tmp_path / "dirty.tif", holed)
    for raster in (clean, dirty):
        code = cli.main(
            ["segment", str(raster), "--output", str(tmp_path / f"{raster.stem}_c.tif")]
            + ["--model", str(tiny_model)]
        )
        assert code == 0
    with rasterio.open(tmp_path / "clean_c.tif") as a, rasterio.open(tmp_path / "dirty_c.tif") as b:
        expected, got = a.read(1), b.read(1)
    assert (got[10:30, 10:30] == 255).all() and got[70, 70] == 255
    elsewhere = np.ones(got.shape, bool)
    elsewhere[5:35, 5:35] = False  # the hole's neighbours see its fill value through the tile
    elsewhere[70, 70] = False
    assert len(np.unique(got[elsewhere])) > 1
    assert (got[elsewhere] == expected[elsewhere]).mean() > 0.9


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["segment", "in.tif", "--output", "c.png"], "name it .tif, not c.png"),
        (["segment", "in.tif", "--output", "c.tif", "--probabilities", "p.jpg"], "not p.jpg"),
        (["preview", "a.tif", "b.tif", "--output", "x.png", "--max-side", "0"], "at least 16"),
        (["export-chips", "i.tif", "--labels", "l.gpkg", "--output", "c", "--patch", "3"], "32"),
        (["train", "--images", "i", "--output", "m", "--steps-per-epoch", "0"], "at least 1"),
        (["train", "--images", "i", "--output", "m", "--patch", "0"], "at least 32 pixels"),
    ],
)
def test_values_that_cannot_be_right_are_refused_up_front(capsys, tmp_path, argv, expected):
    with pytest.raises(SystemExit) as exited:  # argparse's own refusal, or ours: exit 2 either way
        sys.exit(
            cli.main(
                [
                    str(tmp_path / a) if a.endswith((".tif", ".png", ".jpg", ".gpkg")) else a
                    for a in argv
                ]
            )
        )
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_user_models_variable_pointing_at_a_file(capsys, tmp_path, monkeypatch):
    (tmp_path / "models.txt").write_text("not a folder")
    monkeypatch.setenv("SEGMENT_PLUGIN_MODELS", str(tmp_path / "models.txt"))
    assert cli.main(["models"]) == 2  # was silently ignored: fine-tuned models went missing
    assert "is a file: point it at a folder" in capsys.readouterr().err
