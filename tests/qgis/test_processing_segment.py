"""segment_plugin:segment_layer and :vectorize through Processing, on real rasters, end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import ROOT, qgis_process
from qgis.core import (
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsRasterLayer,
    QgsRectangle,
    QgsVectorLayer,
)

from segment_plugin.runner import ENV_PYTHON

DEMO = ROOT.parent / "shared" / "data" / "rasters" / "demo_nl_gorinchem_rgb_25cm.tif"
CLASS_NAMES = ["background", "building", "woodland", "water", "road"]


@pytest.fixture
def demo():
    if not DEMO.exists():
        pytest.skip("../shared/data is absent")
    return DEMO


def run(registry, algorithm_id, parameters, feedback=None):
    algorithm = registry.algorithmById(algorithm_id)
    context = QgsProcessingContext()
    feedback = feedback or QgsProcessingFeedback()
    results, ok = algorithm.run(parameters, context, feedback)
    return results, ok


class LogFeedback(QgsProcessingFeedback):
    """Keeps what an algorithm writes to the Processing log."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def pushInfo(self, info: str) -> None:  # noqa: N802 - QGIS API
        self.lines.append(info)
        super().pushInfo(info)


def test_segment_layer_on_the_demo_raster(registry, tiny_models, demo, tmp_path):
    layer = QgsRasterLayer(str(demo), "demo")
    out, polygons = tmp_path / "classes.tif", tmp_path / "classes.gpkg"
    feedback = LogFeedback()
    results, ok = run(
        registry,
        "segment_plugin:segment_layer",
        {
            "INPUT": layer,
            "MODEL": "tiny",
            "TILE_SIZE": 128,
            "OUTPUT": str(out),
            "OUTPUT_VECTOR": str(polygons),
            "MIN_AREA": 1.0,
        },
        feedback,
    )
    assert ok and results["OUTPUT"] == str(out)
    areas = [line.split() for line in feedback.lines if line.rstrip().endswith("%")]
    assert areas and {row[0] for row in areas} <= set(CLASS_NAMES)  # "water 6.23 ha 99.7 %"
    assert sum(float(row[-2]) for row in areas) == pytest.approx(100, abs=0.5)
    classes = QgsRasterLayer(str(out), "classes")  # picks up classes.qml as its default style
    assert classes.isValid() and classes.crs() == layer.crs()
    assert (classes.width(), classes.height()) == (layer.width(), layer.height())
    assert classes.renderer().type() == "paletted"
    assert [c.label for c in classes.renderer().classes()] == CLASS_NAMES
    vector = QgsVectorLayer(str(polygons), "polygons", "ogr")
    assert vector.isValid() and vector.featureCount() > 0 and vector.crs() == layer.crs()
    assert {f["class"] for f in vector.getFeatures()} <= set(CLASS_NAMES)
    assert min(f.geometry().area() for f in vector.getFeatures()) >= 1.0


def test_keep_class_weights_reaches_the_engine(registry, tiny_models, demo, tmp_path):
    """tiny_weighted's card weighs all classes but building 10⁴: undone, nearly all is building;
    kept, it segments as the unweighted tiny model does."""
    layer = QgsRasterLayer(str(demo), "demo")
    pixels = {}
    for model, keep in (("tiny", False), ("tiny_weighted", False), ("tiny_weighted", True)):
        parameters = {
            "INPUT": layer,
            "MODEL": model,
            "KEEP_CLASS_WEIGHTS": keep,
            "OUTPUT": str(tmp_path / f"{model}_{keep}.tif"),
        }
        results, ok = run(registry, "segment_plugin:segment_layer", parameters)
        assert ok
        pixels[model, keep] = json.loads(results["SUMMARY"])["class_pixels"]
    undone = pixels["tiny_weighted", False]
    assert undone["building"] > 0.9 * sum(undone.values())
    assert pixels["tiny_weighted", True] == pixels["tiny", False]


def test_extent_subset_is_exported_then_segmented(registry, tiny_models, demo, tmp_path):
    layer = QgsRasterLayer(str(demo), "demo")
    full = layer.extent()
    part = QgsRectangle(
        full.xMinimum(), full.yMinimum(), full.xMinimum() + 50, full.yMinimum() + 40
    )
    results, ok = run(
        registry,
        "segment_plugin:segment_layer",
        {
            "INPUT": layer,
            "MODEL": "tiny",
            "EXTENT": part,
            "OUTPUT": str(tmp_path / "part.tif"),
        },
    )
    assert ok
    classes = QgsRasterLayer(results["OUTPUT"], "part")
    assert (classes.width(), classes.height()) == (200, 160)  # 50 m × 40 m at 25 cm
    assert classes.extent().toString(2) == part.toString(2)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"BANDS": "1,2,9"}, "band 9 is out of range: the input has bands 1..3"),
        ({"MODEL": "no-such-model"}, "unknown model 'no-such-model'"),
    ],
)
def test_engine_errors_reach_the_user_as_one_message(
    registry, tiny_models, demo, tmp_path, change, message
):
    parameters = {
        "INPUT": QgsRasterLayer(str(demo), "demo"),
        "MODEL": "tiny",
        "OUTPUT": str(tmp_path / "x.tif"),
        **change,
    }
    algorithm = registry.algorithmById("segment_plugin:segment_layer")
    with pytest.raises(QgsProcessingException) as err:
        algorithm.processAlgorithm(
            algorithm.preprocessParameters(parameters) or parameters,
            QgsProcessingContext(),
            QgsProcessingFeedback(),
        )
    assert message in str(err.value) and "Traceback" not in str(err.value)
    assert not (tmp_path / "x.tif").exists()


def test_cancel_mid_run_cleans_up(registry, tiny_models, demo, tmp_path):
    class CancelEarly(QgsProcessingFeedback):
        def __init__(self):
            super().__init__()
            self.progressChanged.connect(lambda value: value > 3 and self.cancel())

    algorithm = registry.algorithmById("segment_plugin:segment_layer")
    parameters = {
        "INPUT": QgsRasterLayer(str(demo), "demo"),
        "MODEL": "tiny",
        "TILE_SIZE": 32,
        "OVERLAP": 8,
        "OUTPUT": str(tmp_path / "c.tif"),
    }
    with pytest.raises(QgsProcessingException, match="cancelled"):
        algorithm.processAlgorithm(parameters, QgsProcessingContext(), CancelEarly())
    assert list(tmp_path.iterdir()) == []


def test_vectorize_algorithm(registry, tiny_models, demo, tmp_path):
    classes = tmp_path / "c.tif"
    run(
        registry,
        "segment_plugin:segment_layer",
        {"INPUT": QgsRasterLayer(str(demo), "demo"), "MODEL": "tiny", "OUTPUT": str(classes)},
    )
    results, ok = run(
        registry,
        "segment_plugin:vectorize",
        {
            "INPUT": QgsRasterLayer(str(classes), "c"),
            "SMOOTH": True,
            "OUTPUT": str(tmp_path / "p.shp"),
        },
    )
    assert ok
    layer = QgsVectorLayer(results["OUTPUT"], "p", "ogr")
    assert layer.isValid() and layer.featureCount() > 0
    assert [f.name() for f in layer.fields()] == ["class_id", "class", "area_m2", "perim_m"]


def test_qgis_process_segments_headless(qgis_profile, tiny_models, demo, tmp_path, engine_python):
    out = tmp_path / "headless.tif"
    env_models = {"SEGMENT_PLUGIN_MODELS": str(tiny_models), ENV_PYTHON: str(engine_python)}
    previous = {k: os.environ.get(k) for k in env_models}
    os.environ.update(env_models)
    try:
        proc = qgis_process(
            qgis_profile,
            "--json",
            "run",
            "segment_plugin:segment_layer",
            "--",
            f"INPUT={demo}",
            "MODEL=tiny",
            f"OUTPUT={out}",
        )
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert json.loads(proc.stdout)["results"]["OUTPUT"] == str(out)
    assert out.exists() and Path(str(out).replace(".tif", ".qml")).exists()
    # opened in a QGIS without our plugin or .qml: the file's own palette, named, 5 entries
    bare = tmp_path / "bare"
    bare.mkdir()
    for suffix in (".tif", ".tif.aux.xml"):
        (bare / f"copy{suffix}").write_bytes(Path(f"{out}{suffix[4:]}").read_bytes())
    layer = QgsRasterLayer(str(bare / "copy.tif"), "copy")
    assert layer.renderer().type() == "paletted"
    assert [c.label for c in layer.renderer().classes()] == CLASS_NAMES


def test_qgis_process_reports_an_engine_error_once(
    qgis_profile, tiny_models, demo, tmp_path, engine_python, monkeypatch
):
    """One ERROR: line (QGIS's own, from the exception), not ours as well (five lines before)."""
    monkeypatch.setenv("SEGMENT_PLUGIN_MODELS", str(tiny_models))
    monkeypatch.setenv(ENV_PYTHON, str(engine_python))
    proc = qgis_process(
        qgis_profile,
        "run",
        "segment_plugin:segment_layer",
        "--",
        f"INPUT={demo}",
        "MODEL=tiny",
        "BANDS=1,2,5",
        f"OUTPUT={tmp_path / 'x.tif'}",
    )
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR:")]
    assert errors == ["ERROR:\tband 5 is out of range: the input has bands 1..3"]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "x.tif").exists()


@pytest.mark.parametrize(
    "algorithm_id", ["segment_plugin:segment_layer", "segment_plugin:vectorize"]
)
def test_a_file_that_is_not_a_raster_is_not_called_missing(registry, tmp_path, algorithm_id):
    text = tmp_path / "notes.tif"
    text.write_text("this is not an image")
    algorithm = registry.algorithmById(algorithm_id)
    parameters = {"INPUT": str(text), "OUTPUT": str(tmp_path / "out.tif")}
    ok, message = algorithm.checkParameterValues(parameters, QgsProcessingContext())
    assert not ok
    assert (
        message
        == f"INPUT: {text} exists but is not a raster QGIS can read (not an image, or damaged)"
    )
    ok, message = algorithm.checkParameterValues(
        {**parameters, "INPUT": str(tmp_path / "nope.tif")}, QgsProcessingContext()
    )
    assert not ok and "not found" in message  # QGIS's own words, right for a missing file


def test_evaluate_algorithm(registry, tmp_path):
    reference = (
        ROOT.parent / "shared" / "data" / "rasters" / "chesapeake_m_3907833_nw_17_1_lc_classes.tif"
    )
    if not reference.exists():
        pytest.skip("../shared/data is absent")
    layer = QgsRasterLayer(str(reference), "reference")
    results, ok = run(
        registry,
        "segment_plugin:evaluate",
        {"INPUT": layer, "REFERENCE": layer, "REPORT_HTML": str(tmp_path / "r.html")},
    )
    assert ok and results["MIOU"] == 1.0 and results["PIXEL_ACCURACY"] == 1.0
    assert json.loads(results["REPORT"])["pixels"] > 60_000
    assert "<svg" in (tmp_path / "r.html").read_text()


@pytest.mark.parametrize("with_polygons", [True, False])
def test_toolbox_run_loads_named_styled_results(
    registry, tiny_models, demo, tmp_path, with_polygons
):
    """What the toolbox, batch mode, the modeler and runAndLoadResults do after a run.

    QGIS's own result handler loads the outputs (without their .qml) and calls our
    post-processors: the legend must list the model's classes by name, not 256 numbers.
    """
    from processing.gui.Postprocessing import handleAlgorithmResults
    from qgis.core import QgsProject

    project = QgsProject.instance()
    project.removeAllMapLayers()
    outputs = {"OUTPUT": str(tmp_path / "c.tif")}
    if with_polygons:
        outputs["OUTPUT_VECTOR"] = str(tmp_path / "p.gpkg")
    context = QgsProcessingContext()
    context.setProject(project)
    for name, path in outputs.items():
        details = QgsProcessingContext.LayerDetails(name, project, name)
        context.addLayerToLoadOnCompletion(path, details)
    algorithm = registry.algorithmById("segment_plugin:segment_layer")
    feedback = QgsProcessingFeedback()
    results, ok = algorithm.run(
        {"INPUT": QgsRasterLayer(str(demo), "gorinchem"), "MODEL": "tiny", **outputs},
        context,
        feedback,
    )
    assert ok
    assert handleAlgorithmResults(algorithm, context, feedback, showResults=False)
    loaded = {layer.name(): layer for layer in project.mapLayers().values()}
    classes = loaded.pop("gorinchem — classes (tiny)")
    assert classes.renderer().type() == "paletted"
    assert [c.label for c in classes.renderer().classes()] == CLASS_NAMES
    if with_polygons:
        polygons = loaded.pop("gorinchem — class polygons (tiny)")
        assert polygons.renderer().type() == "categorizedSymbol"
        assert [c.label() for c in polygons.renderer().categories()] == CLASS_NAMES
    assert loaded == {}
    project.removeAllMapLayers()


def test_vectorize_run_loads_polygons_in_the_class_colours(registry, tiny_models, demo, tmp_path):
    from processing.gui.Postprocessing import handleAlgorithmResults
    from qgis.core import QgsProject

    classes = tmp_path / "c.tif"
    run(
        registry,
        "segment_plugin:segment_layer",
        {"INPUT": str(demo), "MODEL": "tiny", "OUTPUT": str(classes)},
    )
    project = QgsProject.instance()
    project.removeAllMapLayers()
    context = QgsProcessingContext()
    context.setProject(project)
    polygons = str(tmp_path / "p.gpkg")
    context.addLayerToLoadOnCompletion(
        polygons, QgsProcessingContext.LayerDetails("OUTPUT", project, "OUTPUT")
    )
    algorithm = registry.algorithmById("segment_plugin:vectorize")
    feedback = QgsProcessingFeedback()
    _, ok = algorithm.run(
        {"INPUT": QgsRasterLayer(str(classes), "c"), "OUTPUT": polygons}, context, feedback
    )
    assert ok and handleAlgorithmResults(algorithm, context, feedback, showResults=False)
    (layer,) = project.mapLayers().values()
    assert layer.name() == "c — class polygons"
    assert [c.label() for c in layer.renderer().categories()] == CLASS_NAMES
    project.removeAllMapLayers()
