"""One small exception hierarchy whose messages are written for the user.

The CLI turns a :class:`SegmentPluginError` into one line (text mode) or one ``error`` event
(JSON mode) and a non-zero exit code; anything else is a bug and is reported as such.
"""

from __future__ import annotations


class SegmentPluginError(Exception):
    """Base of every error the engine reports to the user; ``str(err)`` is the message."""

    exit_code = 2
    code = "error"


class InputError(SegmentPluginError):
    """A bad input file, band list, parameter value or combination."""

    code = "input_error"


class OutputError(SegmentPluginError):
    """An output that exists (without overwrite) or cannot be written."""

    code = "output_error"


class ModelError(SegmentPluginError):
    """A model package that is missing, malformed or unsafe to load."""

    code = "model_error"


class DependencyError(SegmentPluginError):
    """A library the engine needs is not installed in this environment."""

    exit_code = 3
    code = "missing_dependency"


class CancelledError(SegmentPluginError):
    """The job was cancelled (SIGTERM/SIGINT from the QGIS side or the user)."""

    exit_code = 130
    code = "cancelled"
