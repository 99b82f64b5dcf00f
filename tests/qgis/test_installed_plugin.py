"""The zip a user installs: its layout, qgis_process with it, and the desktop app with it."""

from __future__ import annotations

import json
import os
import subprocess
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT, qgis_process

from segment_plugin.plugin_files import version

DEMO = ROOT.parent / "shared" / "data" / "rasters" / "demo_nl_gorinchem_rgb_25cm.tif"
README_PICTURES = ROOT / "docs" / "images"  # regenerated here, shown in the README and docs
SEGMENTED = [  # (layer name, raster, the layer band for the model's red, green, blue)
    ("gorinchem", DEMO, "1,2,3"),
    ("rotterdam_ms", DEMO.with_name("spacenet_rotterdam_ms_bgrn_1m_uint16.tif"), "3,2,1"),
]


def test_zip_has_one_top_folder_with_package_metadata_and_resources(plugin_zip):
    names = zipfile.ZipFile(plugin_zip).namelist()
    assert {n.split("/")[0] for n in names} == {"segment_plugin"}
    for required in (
        "segment_plugin/__init__.py",
        "segment_plugin/metadata.txt",
        "segment_plugin/LICENSE",
        "segment_plugin/resources/icons/segment.svg",
        "segment_plugin/engine/__main__.py",
        "segment_plugin/engine/requirements.txt",
        "segment_plugin/engine/constraints.txt",
    ):
        assert required in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc") or "/tests/" in n]


def test_metadata_is_complete(plugin_zip):
    text = zipfile.ZipFile(plugin_zip).read("segment_plugin/metadata.txt").decode()
    keys = {line.split("=", 1)[0] for line in text.splitlines() if "=" in line}
    required = {"name", "qgisMinimumVersion", "description", "about", "version", "author"}
    required |= {"email", "repository", "tracker", "homepage", "tags", "category", "icon"}
    required |= {"hasProcessingProvider", "supportsQt6", "experimental"}
    assert required <= keys
    assert "qgisMinimumVersion=3.22" in text and "category=Raster" in text
    assert "hasProcessingProvider=yes" in text and "supportsQt6=True" in text
    assert f"version={version()}" in text


def test_qgis_process_lists_the_installed_plugin_and_provider(qgis_profile):
    plugins = qgis_process(qgis_profile, "plugins")
    assert plugins.returncode == 0, plugins.stderr
    assert "* segment_plugin" in plugins.stdout  # '*': loaded, implements a provider
    listing = qgis_process(qgis_profile, "list")
    assert listing.returncode == 0, listing.stderr
    assert "segment_plugin:engine_status" in listing.stdout


def test_qgis_process_runs_engine_status_from_the_installed_zip(qgis_profile, engine_python):
    run = qgis_process(qgis_profile, "--json", "run", "segment_plugin:engine_status")
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout)["results"]
    assert results["READY"] is True, results["MESSAGE"]
    assert results["TENSORFLOW"].startswith("2.")
    assert "CPU" in results["DEVICES"]
    report = json.loads(results["REPORT"])
    assert report["engine_version"] == version()


@pytest.mark.desktop
def test_desktop_loads_the_zip_and_opens_both_dialogs(qgis_profile, tmp_path, engine_python):
    out = tmp_path / "smoke"
    out.mkdir()
    user_models = tmp_path / "no_user_models"  # not the other tests' tiny models, nor ~/.local's
    user_models.mkdir()
    env = dict(os.environ, SMOKE_OUT=str(out), SEGMENT_PLUGIN_MODELS=str(user_models))
    if DEMO.exists():  # then the bundled model segments these and the window is grabbed
        env["SMOKE_RASTERS"] = ";".join(f"{name}|{path}|{bands}" for name, path, bands in SEGMENTED)
    for name in ("QGIS_CUSTOM_CONFIG_PATH", "QGIS_OPTIONS_PATH", "QT_QPA_PLATFORM"):
        env.pop(name, None)  # the desktop app draws on Xvfb with the throw-away profile
    command = ["timeout", "420", "xvfb-run", "-a", "-s", "-screen 0 1600x1000x24"]
    command += ["qgis", "--profiles-path", str(qgis_profile)]
    command += [
        "--nologo",
        "--noversioncheck",
        "--code",
        str(Path(__file__).with_name("desktop_smoke.py")),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=480)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["loaded"] and report["action"]
    assert report["in_raster_menu"] and report["in_toolbar"]
    assert report["dialogs"] == ["Segment Layer"]
    # the model list came back from the engine subprocess: the zip's bundled model alone
    assert report["status"] == "1 model(s) found"
    assert report["finetune_in_toolbar"] and report["finetune_status"] == "1 model(s) found"
    artifacts = ROOT / "build" / "screenshots"
    artifacts.mkdir(parents=True, exist_ok=True)
    for name in ("segment_dialog.png", "finetune_dialog.png"):
        png = out / name
        assert png.stat().st_size > 10_000
        (artifacts / f"desktop_{name}").write_bytes(png.read_bytes())
    (README_PICTURES / "segment_dialog.png").write_bytes((out / "segment_dialog.png").read_bytes())
    if not DEMO.exists():
        return
    for name, _, _ in SEGMENTED:
        entry = report["segmented"][name]
        assert entry["status"].startswith("Done:"), entry["status"]
        assert entry["legend"] == ["background", "building", "woodland", "water", "road"]
        window = out / f"qgis_{name}.png"
        assert window.stat().st_size > 200_000  # imagery under classes, not an empty canvas
        (README_PICTURES / f"qgis_{name}_landcover.png").write_bytes(window.read_bytes())
