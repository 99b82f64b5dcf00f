"""The plugin inside QGIS (pytest-qgis): load, actions, provider, dialog, unload."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT, wait_until, words
from qgis.core import QgsApplication
from qgis.PyQt.QtWidgets import QToolBar

import segment_plugin
from segment_plugin.plugin import MENU


@pytest.fixture
def plugin(qgis_iface):
    qgis_iface.addPluginToRasterMenu.reset_mock()
    qgis_iface.removePluginRasterMenu.reset_mock()
    instance = segment_plugin.classFactory(qgis_iface)
    instance.initGui()
    yield instance
    instance.unload()


def registry():
    return QgsApplication.processingRegistry()


def test_classfactory_import_is_lazy():
    """Importing the package must not pull in the plugin's GUI modules (QGIS imports it early)."""
    source = Path(segment_plugin.__file__).read_text()
    assert "from segment_plugin.plugin import" in source.split("def classFactory")[1]


def test_init_gui_adds_actions_toolbar_and_provider(plugin, qgis_iface):
    segment, finetune, settings, export = plugin.actions
    assert segment.text() == "Segment Layer…" and finetune.text() == "Fine-tune model…"
    assert not segment.icon().isNull() and not finetune.icon().isNull()
    toolbar = qgis_iface.mainWindow().findChild(QToolBar, "segment_plugin_toolbar")
    assert toolbar is not None and toolbar.actions() == [segment, finetune]
    menu_calls = [c.args for c in qgis_iface.addPluginToRasterMenu.call_args_list]
    assert menu_calls == [(MENU, segment), (MENU, finetune), (MENU, settings), (MENU, export)]
    assert export.text() == "Export polygons to shapefile…"
    provider = registry().providerById("segment_plugin")
    assert provider is not None
    assert registry().algorithmById("segment_plugin:engine_status") is not None


def test_unload_removes_everything(qgis_iface):
    instance = segment_plugin.classFactory(qgis_iface)
    instance.initGui()
    actions = list(instance.actions)
    instance.unload()
    QgsApplication.processEvents()
    assert registry().providerById("segment_plugin") is None
    removed = [c.args for c in qgis_iface.removePluginRasterMenu.call_args_list[-4:]]
    assert removed == [(MENU, action) for action in actions]
    assert instance.actions == [] and instance.toolbar is None
    assert qgis_iface.mainWindow().findChildren(QToolBar, "segment_plugin_toolbar") == []


def test_engine_settings_show_status_from_the_real_engine(plugin, engine_python):
    plugin.actions[2].trigger()
    dialog = plugin._dialog
    assert dialog is not None and dialog.isVisible()
    wait_until(lambda: dialog.last_result is not None, timeout=120)
    assert dialog.last_result.ok, dialog.last_result.message
    status = words(dialog.status_view.toPlainText())
    assert "Engine ready" in status
    assert "TensorFlow 2." in status and "Keras 3." in status
    assert "Devices CPU" in status
    assert str(engine_python) in dialog.location_label.text()
    shots = ROOT / "build" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    QgsApplication.processEvents()  # let the relayout run, as a user would see it
    assert dialog.grab().save(str(shots / "engine_dialog_ready.png"))


def test_missing_engine_is_a_status_not_an_exception(plugin, missing_engine):
    plugin.actions[2].trigger()
    dialog = plugin._dialog
    wait_until(lambda: dialog.last_result is not None, timeout=30)
    assert dialog.last_result.status == "missing"
    status = words(dialog.status_view.toPlainText())
    assert "NOT FOUND" in status and str(missing_engine) in status
    assert "TensorFlow" not in status
