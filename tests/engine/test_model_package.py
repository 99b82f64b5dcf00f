"""The model package contract: card validation, safe loading, registry."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from conftest import assert_weights_only, build_tiny_model, run_cli, tiny_card

from segment_plugin.engine import cli
from segment_plugin.engine.errors import ModelError
from segment_plugin.engine.models.package import ModelCard, ModelPackage, save_package
from segment_plugin.engine.models.registry import ENV_USER_MODELS, list_models, resolve_model


def test_save_open_load_round_trip(tmp_path):
    package = save_package(build_tiny_model(), tiny_card(), tmp_path / "m")
    opened = ModelPackage.open(tmp_path / "m")
    assert opened.card == package.card
    model = opened.load_model()
    assert model.outputs[0].shape[-1] == 5
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "model.keras"]


def test_a_damaged_model_file_says_so(tmp_path):
    save_package(build_tiny_model(), tiny_card(), tmp_path / "m")
    weights = tmp_path / "m" / "model.keras"
    weights.write_bytes(weights.read_bytes()[:1000])  # a copy cut short
    with pytest.raises(ModelError, match="model.keras is damaged"):  # Keras: "File not found"
        ModelPackage.open(tmp_path / "m").load_model()


def test_later_card_fields_round_trip_and_have_defaults(tmp_path):
    weighted = tiny_card(class_weights=(0.2, 1.0, 1.1, 0.6, 1.2))
    assert ModelCard.from_dict(json.loads(weighted.to_json())) == weighted
    assert weighted.limitations  # the tiny card has some
    data = json.loads(tiny_card().to_json())
    del data["class_weights"], data["limitations"]  # cards written before the fields existed
    older = ModelCard.from_dict(data)
    assert older.class_weights is None and older.limitations == ""
    assert older.normalization.stretch is False


def test_safe_mode_refuses_a_lambda_layer(tmp_path):
    import keras

    inputs = keras.Input((None, None, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    outputs = keras.layers.Conv2D(5, 1, activation="softmax")(x)
    save_package(keras.Model(inputs, outputs), tiny_card(), tmp_path / "evil")
    with pytest.raises(ModelError, match="safe_mode=True"):
        ModelPackage.open(tmp_path / "evil").load_model()


def test_card_must_match_the_network(tmp_path):
    save_package(build_tiny_model(bands=4), tiny_card(), tmp_path / "m")
    with pytest.raises(ModelError, match="takes 4 bands and gives 5 classes, but its card says 3"):
        ModelPackage.open(tmp_path / "m").load_model()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"schema_version": 99}, "schema_version 99 is not supported"),
        ({"classes": []}, "no classes"),
        ({"classes": [{"code": 255, "name": "x", "color": "#000000"}]}, "codes must be distinct"),
        ({"normalization": {"method": "magic"}}, "unknown normalization"),
        ({"normalization": {"method": "meanstd", "mean": [1], "std": [1]}}, "one mean and one std"),
        (
            {"normalization": {"method": "percentile", "stretch": True}},
            "stretch is for scale or meanstd",
        ),
        ({"normalization": {"stretch": True, "low": 98, "high": 2}}, "0 <= low < high <= 100"),
        ({"normalization": {"max_gain": 2.0}}, "max_gain is a stretch's limit"),
        ({"normalization": {"stretch": True, "max_gain": 0.5}}, "max_gain is a stretch's limit"),
        ({"bands": None}, "malformed"),
        ({"class_weights": [1.0, 2.0]}, "class_weights needs one positive number per class"),
        ({"class_weights": [1.0, 1.0, 0.0, 1.0, 1.0]}, "one positive number per class"),
    ],
)
def test_bad_cards_are_refused_by_name(change, message):
    data = json.loads(tiny_card().to_json())
    data.update(change)
    with pytest.raises(ModelError, match=message):
        ModelCard.from_dict(data)


def test_registry_finds_user_models_by_name(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(ENV_USER_MODELS, str(tmp_path))
    save_package(build_tiny_model(), replace(tiny_card(), name="mine"), tmp_path / "mine")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model.json").write_text("{not json")
    assert resolve_model("mine").card.name == "mine"
    origins = {(o, getattr(p, "card", None) and p.card.name) for o, p in list_models()}
    assert ("user", "mine") in origins
    assert any(isinstance(p, ModelError) for _, p in list_models())
    with pytest.raises(ModelError, match=r"unknown model 'other' \(known models: .*mine"):
        resolve_model("other")
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert "mine [user]" in out and "unusable" in out
    assert "  limitations: random weights: every scene" in out
    run = run_cli("models", "--progress", "json")  # as the plugin lists them
    events = [json.loads(line) for line in run.stdout.splitlines()]
    listing = next(e["data"]["models"] for e in events if e["event"] == "result")
    per_raster = {
        m["card"]["name"]: m["card"]["normalization"]["per_raster"] for m in listing if "card" in m
    }
    assert per_raster["mine"] is False and per_raster["landcover"] is True  # the bundled stretches


def test_bundled_model_is_what_its_card_and_the_plugin_promise():
    """The shipped landcover package: LandCover.ai classes, RGB uint8 in, safe to load, small."""
    package = resolve_model("landcover")
    card = package.card
    assert [(c.code, c.name) for c in card.classes] == [
        (0, "background"),
        (1, "building"),
        (2, "woodland"),
        (3, "water"),
        (4, "road"),
    ]
    assert card.bands == ("red", "green", "blue") and card.input_dtype == "uint8"
    # each raster's contrast stretched, at one ground resolution
    assert card.normalization.method == "scale" and card.normalization.stretch
    assert card.resolution_m == 0.5
    assert card.tile_size % card.input_multiple == 0
    assert {"miou", "per_class_iou", "on", "per_source"} <= set(card.metrics)
    assert card.class_weights is not None and len(card.class_weights) == 5  # trained weighted
    assert "Dubai" in card.limitations  # where it fails, in the card the dialogs show
    # what it was trained on, at which resolution, under which licence, for redistributors
    sources = {s["name"]: s for s in card.training["sources"]}
    assert set(sources) == {"dubai", "naip_chesapeake", "dronedeploy", "massachusetts_roads",
                            "deepglobe_forest"}  # fmt: skip
    assert all(s["licence"] and s["gsd_m"] for s in sources.values())
    keras_file = package.path / "model.keras"
    assert keras_file.stat().st_size <= 15e6
    assert_weights_only(keras_file)  # no optimizer state shipped
    model = package.load_model()  # safe_mode=True
    assert model.inputs[0].shape[-1] == 3 and model.outputs[0].shape[-1] == 5


def test_average_is_the_mean_of_the_members_weights(tmp_path, capsys):
    """average: weight by weight the members' mean, their record in the card, no stale metrics;
    members whose cards or networks differ are refused, an existing output kept."""
    import keras
    import numpy as np

    from segment_plugin.engine.errors import InputError, OutputError
    from segment_plugin.engine.models.average import average_models

    first, second = build_tiny_model(), build_tiny_model()
    second.set_weights([w + 0.5 * (k + 1) for k, w in enumerate(second.get_weights())])
    card = tiny_card(training={"seed": 1, "base_model": "base"}, metrics={"miou": 0.5})
    save_package(first, card, tmp_path / "a")
    save_package(second, replace(card, training={"seed": 2, "base_model": "base"}), tmp_path / "b")
    a, b, out = (str(tmp_path / n) for n in ("a", "b", "soup"))
    assert cli.main(["average", a, b, "--output", out, "--name", "soup"]) == 0
    assert "mean of 2 models' weights" in capsys.readouterr().out
    soup = ModelPackage.open(tmp_path / "soup")
    expected = [(a + b) / 2 for a, b in zip(first.get_weights(), second.get_weights())]
    for got, want in zip(soup.load_model().get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert soup.card.name == "soup" and soup.card.metrics == {}
    assert [m["seed"] for m in soup.card.training["averaged"]] == [1, 2]

    with pytest.raises(OutputError, match="exists"):
        average_models([str(tmp_path / "a"), str(tmp_path / "b")], tmp_path / "soup")
    assert len(list((tmp_path / "soup").iterdir())) == 2  # untouched, nothing partial
    save_package(first, replace(card, resolution_m=0.5), tmp_path / "half")
    with pytest.raises(InputError, match="differ in resolution_m"):
        average_models([str(tmp_path / "a"), str(tmp_path / "half")], tmp_path / "x")
    inputs = keras.Input((None, None, 3))
    wider = keras.layers.Conv2D(16, 3, padding="same")(inputs)
    save_package(
        keras.Model(inputs, keras.layers.Conv2D(5, 1, activation="softmax")(wider)),
        card,
        tmp_path / "wider",
    )
    with pytest.raises(ModelError, match="networks differ"):
        average_models([str(tmp_path / "a"), str(tmp_path / "wider")], tmp_path / "x")
    assert not (tmp_path / "x").exists()
    assert cli.main(["average", str(tmp_path / "a"), "--output", str(tmp_path / "y")]) == 2
