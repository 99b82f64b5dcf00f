"""QGIS wiring: actions, menus, toolbar, Processing provider — and nothing else."""

from __future__ import annotations

from qgis.core import QgsApplication, QgsMapLayerType
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import QAction

from segment_plugin.plugin_files import resource_path

MENU = "&Segment Plugin"


class SegmentPlugin:
    """The plugin object QGIS holds; created by :func:`segment_plugin.classFactory`."""

    def __init__(self, iface) -> None:
        self.iface = iface
        self.actions: list[QAction] = []
        self.toolbar = None
        self.provider = None
        self._dialog = None
        self._segment_dialog = None
        self._finetune_dialog = None

    def initProcessing(self) -> None:  # noqa: N802 - QGIS API
        """Register the Processing provider (QGIS calls this also for qgis_process)."""
        from segment_plugin.processing.provider import SegmentProvider

        self.provider = SegmentProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self) -> None:  # noqa: N802 - QGIS API
        """Add the actions to the Raster menu and the plugin toolbar."""
        self.initProcessing()
        main_window = self.iface.mainWindow()
        icon = QIcon(str(resource_path("icons", "segment.svg")))
        segment = QAction(icon, "Segment Layer…", main_window)
        segment.setObjectName("segment_plugin_segment_layer")
        segment.setToolTip("Segment the active raster layer into land-cover classes")
        segment.triggered.connect(self.show_segment_dialog)
        settings = QAction(
            QgsApplication.getThemeIcon("/mActionOptions.svg"), "Engine settings…", main_window
        )
        settings.setObjectName("segment_plugin_engine_settings")
        settings.triggered.connect(self.show_engine_dialog)
        finetune = QAction(
            QgsApplication.getThemeIcon("/mActionAddTable.svg"), "Fine-tune model…", main_window
        )
        finetune.setObjectName("segment_plugin_fine_tune")
        finetune.setToolTip("Improve a model on your own labels (polygons or a class raster)")
        finetune.triggered.connect(self.show_finetune_dialog)
        export = QAction("Export polygons to shapefile…", main_window)
        export.setObjectName("segment_plugin_export_shapefile")
        export.setToolTip("Write the selected polygon layer to a shapefile (.prj, UTF-8 .cpg)")
        export.triggered.connect(self.export_polygons)
        self.actions = [segment, finetune, settings, export]
        # also in the Layers panel's context menu of vector layers
        self.iface.addCustomActionForLayerType(export, "", QgsMapLayerType.VectorLayer, True)
        self._layer_menu_action = export

        self.toolbar = self.iface.addToolBar("Segment Plugin")
        self.toolbar.setObjectName("segment_plugin_toolbar")
        self.toolbar.addAction(segment)
        self.toolbar.addAction(finetune)
        for action in self.actions:
            self.iface.addPluginToRasterMenu(MENU, action)

    def unload(self) -> None:
        """Remove everything initGui added."""
        if getattr(self, "_layer_menu_action", None) is not None:
            self.iface.removeCustomActionForLayerType(self._layer_menu_action)
            self._layer_menu_action = None
        for action in self.actions:
            self.iface.removePluginRasterMenu(MENU, action)
            action.deleteLater()
        self.actions = []
        if self.toolbar is not None:
            # detach now: deleteLater alone leaves it in the main window until the event loop runs
            self.iface.mainWindow().removeToolBar(self.toolbar)
            self.toolbar.setParent(None)
            self.toolbar.deleteLater()
            self.toolbar = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
        for dialog in (self._dialog, self._segment_dialog, self._finetune_dialog):
            if dialog is not None:
                dialog.close()
                dialog.deleteLater()
        self._dialog = self._segment_dialog = self._finetune_dialog = None

    def _engine_dialog(self):
        from segment_plugin.gui.dlg_engine import EngineDialog

        if self._dialog is None:
            self._dialog = EngineDialog(self.iface.mainWindow())
        return self._dialog

    def show_engine_dialog(self) -> None:
        """Show the engine status/settings dialog and refresh the status."""
        dialog = self._engine_dialog()
        dialog.show()
        dialog.raise_()
        dialog.check_engine()

    def export_polygons(self) -> None:
        """Export the active polygon layer to a shapefile."""
        from segment_plugin.gui.export_shapefile import ask_and_export

        ask_and_export(self.iface)

    def show_segment_dialog(self) -> None:
        """Segment Layer: the dialog, with the active raster layer preselected."""
        from segment_plugin.gui.dlg_segment import SegmentDialog

        if self._segment_dialog is None:
            self._segment_dialog = SegmentDialog(self.iface)
        self._segment_dialog.show()
        self._segment_dialog.raise_()

    def show_finetune_dialog(self) -> None:
        """Fine-tune model: the dialog; a model it makes is listed in Segment Layer at once."""
        from segment_plugin.gui.dlg_finetune import FineTuneDialog

        if self._finetune_dialog is None:
            self._finetune_dialog = FineTuneDialog(self.iface)
            self._finetune_dialog.modelTrained.connect(self._model_added)
        self._finetune_dialog.show()
        self._finetune_dialog.raise_()

    def _model_added(self, _name: str) -> None:
        if self._segment_dialog is not None:
            self._segment_dialog.load_models()
