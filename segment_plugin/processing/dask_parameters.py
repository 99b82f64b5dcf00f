"""SCHEDULER and WORKERS: the advanced parameters that run an algorithm's engine job on Dask.

The default SCHEDULER is the engine dialog's Dask scheduler setting, so a user who set up a
cluster once gets it in the toolbox, in batch mode and in models without typing it again.
"""

from __future__ import annotations

from qgis.core import (
    QgsProcessingParameterDefinition,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from segment_plugin.settings import PluginSettings


def add_dask_parameters(algorithm) -> None:
    """Add SCHEDULER (empty: one engine process) and WORKERS, both under Advanced."""
    scheduler = QgsProcessingParameterString(
        "SCHEDULER",
        "Dask scheduler (empty: this computer; 'local': a cluster of WORKERS processes here; "
        "tcp://host:port: a cluster whose workers see the input and output folder)",
        defaultValue=PluginSettings.load().dask_scheduler,
        optional=True,
    )
    workers = QgsProcessingParameterNumber(
        "WORKERS", "Workers (with 'local')", defaultValue=2, minValue=1
    )
    for parameter in (scheduler, workers):
        parameter.setFlags(parameter.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        algorithm.addParameter(parameter)


def dask_args(algorithm, parameters, context) -> list[str]:
    """The engine's --scheduler/--workers flags for these parameter values ([] for none)."""
    scheduler = algorithm.parameterAsString(parameters, "SCHEDULER", context).strip()
    if not scheduler:
        return []
    workers = algorithm.parameterAsInt(parameters, "WORKERS", context)
    return ["--scheduler", scheduler, "--workers", str(workers)]
