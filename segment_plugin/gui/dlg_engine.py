"""Engine status and setup dialog.

Shows which engine environment the plugin uses and why (environment variable, setting or the
default ``.venv``), what the engine itself reports through the subprocess protocol (Python,
TensorFlow, libraries, CPU/GPU), and can create a new engine environment in the background.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from qgis.core import Qgis, QgsApplication, QgsMessageLog
from qgis.PyQt.QtGui import QIcon
from qgis.PyQt.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QTextBrowser,
    QVBoxLayout,
)

from segment_plugin.engine_setup import ENGINE_KINDS, find_base_python, setup_steps
from segment_plugin.plugin_files import resource_path, version
from segment_plugin.runner import EngineResult
from segment_plugin.settings import PluginSettings
from segment_plugin.tasks.engine_task import EngineCommandTask
from segment_plugin.tasks.setup_task import SetupEngineTask

LOG_TAG = "Segment Plugin"
#: Distribution name → how its authors spell it.
_SHOWN_PACKAGES = {
    "onnxruntime": "ONNX Runtime",
    "tensorflow": "TensorFlow",
    "keras": "Keras",
    "numpy": "NumPy",
    "rasterio": "rasterio",
    "shapely": "Shapely",
    "geopandas": "GeoPandas",
    "pyogrio": "pyogrio",
}


def default_engine_dir() -> Path:
    """Where the dialog creates an engine: in the QGIS profile, so plugin upgrades keep it."""
    return Path(QgsApplication.qgisSettingsDirPath()) / "segment_plugin" / "engine-venv"


class EngineDialog(QDialog):
    """Engine status (found/missing, Python, TensorFlow, devices) and environment creation."""

    def __init__(self, parent=None, title: str = "Segment Plugin — engine") -> None:
        super().__init__(parent)
        self.setWindowTitle(title)
        self.setWindowIcon(QIcon(str(resource_path("icons", "segment.svg"))))
        self.setMinimumWidth(620)
        self._check_task: EngineCommandTask | None = None
        self._setup_task: SetupEngineTask | None = None
        self.last_result: EngineResult | None = None
        self._build()
        self._load_settings()

    # ---- construction -------------------------------------------------------------------
    def _build(self) -> None:
        layout = QVBoxLayout(self)
        heading = QLabel(
            f"<b>Segment Plugin {version()}</b> — land-cover segmentation. The deep-learning "
            "engine runs in its own Python environment, outside QGIS."
        )
        heading.setWordWrap(True)
        layout.addWidget(heading)

        where = QGroupBox("Engine environment")
        form = QFormLayout(where)
        self.python_edit = QLineEdit()
        self.python_edit.setPlaceholderText("path to the engine's python (empty: default .venv)")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse_python)
        row = QHBoxLayout()
        row.addWidget(self.python_edit)
        row.addWidget(browse)
        form.addRow("Python:", row)
        self.location_label = QLabel()
        self.location_label.setWordWrap(True)
        form.addRow("In use:", self.location_label)
        self.scheduler_edit = QLineEdit()
        self.scheduler_edit.setPlaceholderText("optional: tcp://host:8786 (or local)")
        self.scheduler_edit.setToolTip(
            "A Dask cluster for Segment layer and Vectorize in Processing (their SCHEDULER "
            "default): the engine runs their ranges of rows on its workers, which must see the "
            "input and output folders. 'local': a cluster of worker processes on this computer."
        )
        form.addRow("Dask scheduler:", self.scheduler_edit)
        self.check_button = QPushButton("Save and check")
        self.check_button.clicked.connect(self._save_and_check)
        form.addRow("", self.check_button)
        layout.addWidget(where)

        status = QGroupBox("Status (reported by the engine)")
        status_layout = QVBoxLayout(status)
        self.status_view = QTextBrowser()
        self.status_view.setMinimumHeight(130)
        status_layout.addWidget(self.status_view)
        layout.addWidget(status)

        create = QGroupBox("Create an engine environment (pinned wheels from PyPI)")
        create_layout = QVBoxLayout(create)
        kind_row = QHBoxLayout()
        kind_row.addWidget(QLabel("Kind:"))
        self.kind_combo = QComboBox()
        for kind, (_, what) in ENGINE_KINDS.items():
            label = "Full" if kind == "full" else "Inference only"
            self.kind_combo.addItem(f"{label} — {what}", kind)
        self.kind_combo.setToolTip(
            "Inference only runs ONNX models (the bundled model ships as one) with ONNX Runtime: "
            "a fraction of the download. Fine-tuning needs the full engine."
        )
        kind_row.addWidget(self.kind_combo, 1)
        create_layout.addLayout(kind_row)
        target_row = QHBoxLayout()
        self.target_edit = QLineEdit(str(default_engine_dir()))
        target_row.addWidget(QLabel("Folder:"))
        target_row.addWidget(self.target_edit)
        self.create_button = QPushButton("Create engine environment")
        self.create_button.clicked.connect(self._create_environment)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self._cancel_setup)
        target_row.addWidget(self.create_button)
        target_row.addWidget(self.cancel_button)
        create_layout.addLayout(target_row)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        create_layout.addWidget(self.progress)
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(2000)
        self.log_view.setMinimumHeight(90)
        create_layout.addWidget(self.log_view)
        layout.addWidget(create)

        buttons = QDialogButtonBox(QDialogButtonBox.Close)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    def _load_settings(self) -> None:
        settings = PluginSettings.load()
        self.python_edit.setText(settings.engine_python)
        self.scheduler_edit.setText(settings.dask_scheduler)
        self.location_label.setText(settings.engine().describe())

    # ---- status -------------------------------------------------------------------------
    def check_engine(self) -> None:
        """Ask the engine for its status in a background task."""
        engine = PluginSettings.load().engine()
        self.location_label.setText(engine.describe())
        if self._check_task is not None:
            return  # one check at a time
        if not engine.exists:
            self._show_result(
                EngineResult("missing", None, message=f"engine not found: {engine.describe()}")
            )
            return
        self.status_view.setHtml("<i>checking… (starting the engine and TensorFlow)</i>")
        self.check_button.setEnabled(False)
        command = ["info"]
        scheduler = PluginSettings.load().dask_scheduler
        if scheduler:
            command += ["--scheduler", scheduler]
        task = EngineCommandTask("Segment Plugin: checking the engine", command, engine.python)
        task.completed.connect(self._show_result)
        self._check_task = task
        QgsApplication.taskManager().addTask(task)

    def _show_result(self, result: EngineResult) -> None:
        self._check_task = None
        self.check_button.setEnabled(True)
        self.last_result = result
        self.status_view.setHtml(status_html(result))
        level = Qgis.Info if result.ok else Qgis.Warning
        QgsMessageLog.logMessage(f"engine status: {result.status} {result.message}", LOG_TAG, level)

    def _save_and_check(self) -> None:
        settings = PluginSettings.load()
        settings.engine_python = self.python_edit.text().strip()
        settings.dask_scheduler = self.scheduler_edit.text().strip()
        settings.save()
        self.check_engine()

    def _browse_python(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Engine Python", self.python_edit.text())
        if path:
            self.python_edit.setText(path)

    # ---- setup --------------------------------------------------------------------------
    def _create_environment(self) -> None:
        base = find_base_python()
        if base is None:
            self._log("No python3 to create the environment from: set SEGMENT_PLUGIN_BASE_PYTHON.")
            return
        target = Path(self.target_edit.text().strip())
        kind = self.kind_combo.currentData()
        self.start_setup(target, base, steps=setup_steps(target, base, kind=kind))

    def start_setup(self, target: Path, base_python: Path, steps=None) -> SetupEngineTask:
        """Create an engine environment at ``target`` in a background task."""
        self.log_view.clear()
        self._log(f"Creating the engine environment in {target} from {base_python}")
        self.create_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)
        task = SetupEngineTask(target, base_python, steps=steps)
        task.lineLogged.connect(self._log)
        task.stepStarted.connect(self._log)
        task.progressChanged.connect(lambda value: self.progress.setValue(int(value)))
        task.completed.connect(self._setup_finished)
        self._setup_task = task
        QgsApplication.taskManager().addTask(task)
        return task

    def _cancel_setup(self) -> None:
        if self._setup_task is not None:
            self._setup_task.cancel()

    def _setup_finished(self, ok: bool, message: str) -> None:
        self._setup_task = None
        self.create_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if ok:
            self.progress.setValue(100)
            self._log(f"Engine environment ready: {message}")
            self.python_edit.setText(message)
            self._save_and_check()
        else:
            self.progress.setValue(0)
            self._log(f"FAILED: {message}")
            QgsMessageLog.logMessage(f"engine setup failed: {message}", LOG_TAG, Qgis.Critical)

    def _log(self, line: str) -> None:
        self.log_view.appendPlainText(line)

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt override
        """Closing the dialog cancels a running setup: no half-built environment survives."""
        self._cancel_setup()
        super().closeEvent(event)


def status_html(result: EngineResult) -> str:
    """The engine's report as a small HTML table: state, Python, libraries, devices."""
    report = result.data
    light = report.get("kind") == "inference-only"
    if result.ok and report.get("ready"):
        state = "<span style='color:#1A7F37'><b>ready</b></span>"
        if light:
            state += " — inference only (ONNX models); fine-tuning needs the full engine"
    elif result.ok:
        missing = ", ".join(report.get("missing", []))
        state = f"<span style='color:#B35900'><b>incomplete</b></span>: missing {missing}"
    else:
        state = (
            f"<span style='color:#C62828'><b>{result.status}</b></span>: {escape(result.message)}"
        )
    rows = [("Engine", state)]
    dask = report.get("dask") if report else None
    if dask and dask["error"]:  # second: the table scrolls, and this is what was just changed
        rows.append(("Dask", f"<span style='color:#C62828'>{escape(dask['error'])}</span>"))
    elif dask:
        rows.append(("Dask", escape(f"{dask['scheduler']} — {dask['summary']}")))
    if report:
        packages = report.get("packages") or {}
        rows.append(("Python", escape(f"{report['python']} — {report['executable']}")))
        for name, title in _SHOWN_PACKAGES.items():
            missing = name in report.get("missing", [])
            absent = "<b>MISSING</b>" if missing or not light else "not installed"
            rows.append((title, packages.get(name) or absent))
        devices = report.get("devices") or []
        rows.append(("Devices", escape(", ".join(f"{d['type']} ({d['name']})" for d in devices))))
    cells = "".join(f"<tr><td><b>{k}</b>&nbsp;&nbsp;</td><td>{v}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"
