"""Faults injected for real: damaged rasters, a disk that fills, a run killed hard, bad labels.

Each asserts the exit code, one ``error:`` line naming the cause, no traceback, and what the
output folder holds afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, assert_one_error, no_outputs, scene, write_png, write_raster

from segment_plugin.engine import cli


def run(capsys, *args) -> tuple[int, list[str]]:
    code = cli.main([str(a) for a in args])
    return code, capsys.readouterr().err.strip().splitlines()


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def tiled(path: Path, data: np.ndarray) -> Path:
    """A tiled (64²), deflate-compressed GeoTIFF of ``data``, as most orthophotos are stored."""
    import rasterio

    bands, height, width = data.shape
    profile = {"driver": "GTiff", "width": width, "height": height, "count": bands}
    profile.update(dtype="uint8", tiled=True, blockxsize=64, blockysize=64, compress="deflate")
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def cut_short(path: Path, data: np.ndarray) -> Path:
    """``data`` as a tiled GeoTIFF cut to half its bytes (a failed copy)."""
    whole = tiled(path.with_name("whole_" + path.name), data)
    path.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()
    return path


def garbage_in_a_tile(path: Path, data: np.ndarray) -> Path:
    """``data`` as a tiled GeoTIFF whose tile (1, 1) of band 1 holds random bytes (bit rot)."""
    import rasterio

    tiled(path, data)
    with rasterio.open(path) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_1_1", "TIFF", bidx=1))
        size = int(src.get_tag_item("BLOCK_SIZE_1_1", "TIFF", bidx=1))
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(np.random.default_rng(0).integers(0, 256, size, np.uint8).tobytes())
    return path


def vrt_of_a_deleted_file(folder: Path) -> Path:
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource>'
        f'<SourceFilename relativeToVRT="1">gone.tif</SourceFilename><SourceBand>{b}</SourceBand>'
        "</SimpleSource></VRTRasterBand>"
        for b in (1, 2, 3)
    )
    vrt = folder / "mosaic.vrt"  # its source, gone.tif, was deleted (or never copied)
    vrt.write_text(f'<VRTDataset rasterXSize="64" rasterYSize="64">{bands}</VRTDataset>')
    return vrt


def class_codes(size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 5, (1, size, size)).astype(np.uint8)


@pytest.mark.parametrize(
    "case", ["segment cut", "segment garbage", "segment vrt", "vectorize cut", "vectorize garbage"]
)
def test_damaged_raster_is_an_input_error_naming_the_file(capsys, tmp_path, tiny_model, case):
    command, kind = case.split()
    data = scene(256, 256) if command == "segment" else class_codes(256)
    if kind == "vrt":
        damaged, named = vrt_of_a_deleted_file(tmp_path), "gone.tif"
    elif kind == "cut":
        damaged, named = cut_short(tmp_path / "cut.tif", data), "cut.tif"
    else:
        damaged, named = garbage_in_a_tile(tmp_path / "rot.tif", data), "rot.tif"
    out = tmp_path / ("out.tif" if command == "segment" else "out.gpkg")
    extra = ["--model", tiny_model] if command == "segment" else []
    code, lines = run(capsys, command, damaged, "--output", out, *extra)
    assert_one_error(code, lines, "the file looks damaged or truncated")
    assert named in [line for line in lines if line.startswith("error:")][0]
    assert no_outputs(tmp_path)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MB file system that really fills up (a tmpfs: needs root, skipped otherwise)."""
    folder = tmp_path / "small_disk"
    folder.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)]
    if os.geteuid() != 0 or subprocess.run(mount, capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def fill(folder: Path, leave: int) -> None:
    """Fill ``folder``'s disk until about ``leave`` bytes are free."""
    stat = os.statvfs(folder)
    (folder / "filler").write_bytes(bytes(stat.f_bavail * stat.f_frsize - leave))


def test_disk_full_while_segmenting_keeps_the_previous_output(
    capsys, tmp_path, small_disk, tiny_model
):
    out = small_disk / "out.tif"
    earlier = write_raster(tmp_path / "earlier.tif", scene(64, 64, seed=7))
    assert run(capsys, "segment", earlier, "--output", out, "--model", tiny_model)[0] == 0
    noise = np.random.default_rng(1).integers(0, 256, (3, 512, 512)).astype(np.uint8)
    raster = write_raster(tmp_path / "noise.tif", noise)  # a noisy map: ~4× compression at best
    fill(small_disk, 12 * 1024)  # above the least a 512² class raster can take (5 KB)
    before = contents(small_disk)
    code, lines = run(
        capsys, "segment", raster, "--output", out, "--model", tiny_model, "--overwrite"
    )
    assert_one_error(code, lines, "the disk is full")
    assert any("the disk may fill" in line for line in lines)  # warned before the long run
    assert contents(small_disk) == before


def test_outputs_that_cannot_fit_the_disk_are_refused_before_the_run(
    capsys, tmp_path, small_disk, tiny_model
):
    raster = write_raster(tmp_path / "big.tif", scene(1024, 1024))
    out, probabilities = small_disk / "out.tif", small_disk / "out_p.tif"
    code, lines = run(
        capsys, "segment", raster, "--output", out, "--probabilities", probabilities,
        "--model", tiny_model,
    )  # fmt: skip
    assert_one_error(code, lines, "the outputs need at least about 1.7 MB in")
    assert "(class raster 1.0 MB uncompressed, probabilities 5.0 MB uncompressed)" in lines[-1]
    assert "is free there: free some space or write elsewhere" in lines[-1]
    assert contents(small_disk) == {}


def test_disk_full_while_vectorising_leaves_nothing(capsys, tmp_path, small_disk):
    codes = write_raster(tmp_path / "codes.tif", class_codes(512))  # ~40 MB of polygons
    code, lines = run(capsys, "vectorize", codes, "--output", small_disk / "out.gpkg")
    assert_one_error(code, lines, "the disk is full")
    assert contents(small_disk) == {}


def test_a_run_killed_hard_leaves_temporaries_the_next_run_removes(tmp_path, tiny_model):
    """SIGKILL (power loss, the OOM killer) mid-run: no cleanup can run; the rerun does it."""
    raster = write_raster(tmp_path / "big.tif", np.tile(scene(128, 128), (1, 8, 8)))
    out = tmp_path / "out.tif"
    command = [sys.executable, "-m", "segment_plugin.engine", "segment", str(raster)]
    command += ["--output", str(out), "--model", str(tiny_model), "--tile", "64", "--batch", "1"]
    proc = subprocess.Popen(
        [*command, "--progress", "json"], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    for line in proc.stdout:
        event = json.loads(line)
        if event["event"] == "progress" and event["fraction"] > 0.1:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    proc.stdout.close()
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != "big.tif")
    assert left and all(name.startswith(".out.") and ".partial." in name for name in left)
    assert subprocess.run(command, capture_output=True, cwd=ROOT).returncode == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["big.tif", "out.qml", "out.tif", "out.tif.aux.xml"]  # nothing beside the input


@pytest.mark.parametrize("mapping", [None, {"1": 7, "2": 2}, {"1": 1, "2": 300}])
def test_label_codes_that_are_not_classes_are_refused_before_training(capsys, tmp_path, mapping):
    """A mask holding 7 for a 5-class model, or a mapping to 7 or 300: refused by name."""
    labels = np.ones((1, 64, 64), np.uint8)
    labels[:, 32:] = 2
    if mapping is None:  # a chips folder whose mask holds a code the model lacks
        source = tmp_path / "chips"
        source.mkdir()
        write_png(source / "a.png", scene(64, 64))
        labels[:, 10:20, 10:20] = 7
        write_png(source / "a_mask.png", labels)
        given = ["--images", source]
        expected = "a_mask.png: mask values [7] are not class codes [0, 1, 2, 3, 4]"
    else:  # a raster and its class raster, values mapped to codes
        given = ["--raster", write_raster(tmp_path / "image.tif", scene(64, 64))]
        given += ["--labels", write_raster(tmp_path / "labels.tif", labels)]
        given += ["--mapping", json.dumps(mapping)]
        wrong = max(mapping.values())
        expected = f"the mapping gives [{wrong}], which are not class codes [0, 1, 2, 3, 4]"
    before = sorted(p.name for p in tmp_path.iterdir())
    code, lines = run(
        capsys, "train", *given, "--base-model", "landcover", "--output", tmp_path / "m"
    )
    assert_one_error(code, lines, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_chips_mapped_beyond_a_byte_are_refused(capsys, tmp_path):
    image = write_raster(tmp_path / "image.tif", scene(64, 64))
    labels = write_raster(tmp_path / "labels.tif", np.ones((1, 64, 64), np.uint8))
    code, lines = run(
        capsys, "export-chips", image, "--labels", labels, "--mapping", '{"1": 300}',
        "--output", tmp_path / "chips",
    )  # fmt: skip
    assert_one_error(code, lines, "the mapping's 1 → 300: class codes are 0–254, 255 ignore")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.tif", "labels.tif"]


def test_disk_full_at_the_last_write_keeps_the_previous_output(
    capsys, tmp_path, tiny_model, monkeypatch
):
    """The failure after the raster is complete (its style): the previous output stays whole.

    Injected, so it runs without root, at the one moment a real small disk cannot aim at.
    """
    import errno

    from segment_plugin.engine import inference

    out = tmp_path / "out.tif"
    earlier = write_raster(tmp_path / "earlier.tif", scene(64, 64, seed=7))  # another result
    assert run(capsys, "segment", earlier, "--output", out, "--model", tiny_model)[0] == 0
    raster = write_raster(tmp_path / "rgb.tif", scene(64, 64))
    before = contents(tmp_path)

    def full(*_args):
        raise OSError(errno.ENOSPC, "No space left on device", str(out.with_suffix(".qml")))

    monkeypatch.setattr(inference, "write_class_sidecars", full)  # the last file of the job
    code, lines = run(
        capsys, "segment", raster, "--output", out, "--model", tiny_model, "--overwrite"
    )
    assert_one_error(code, lines, "the disk is full")
    assert contents(tmp_path) == before
