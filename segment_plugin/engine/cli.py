"""The ``segment-plugin`` command line: parse arguments, call the library, report.

Thin by design: each command turns its arguments into a call of the engine library and reports
through a :class:`~segment_plugin.engine.progress.Reporter`. The QGIS side runs the very same
commands with ``--progress json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from segment_plugin import plugin_files
from segment_plugin.engine.errors import CancelledError, SegmentPluginError
from segment_plugin.engine.info import engine_info, format_info
from segment_plugin.engine.progress import (
    PROTOCOL_VERSION,
    JsonLinesReporter,
    Reporter,
    TextReporter,
    raise_cancelled_on_signals,
)

Command = Callable[[argparse.Namespace, Reporter], None]


def _cmd_info(args: argparse.Namespace, reporter: Reporter) -> None:
    report = engine_info(probe_devices=not args.no_devices)
    reporter.result(**report)
    if args.progress == "text":
        print(format_info(report))


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        choices=("text", "json"),
        default="text",
        help="text for people (default) or json lines for programs such as the QGIS plugin",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(
        prog="segment-plugin",
        description="Land-cover segmentation engine of the segment_plugin QGIS plugin.",
    )
    parser.add_argument("--version", action="version", version=plugin_files.version())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser("info", help="report Python, library versions and devices")
    info.add_argument(
        "--no-devices", action="store_true", help="do not import TensorFlow to list devices"
    )
    _add_common(info)
    info.set_defaults(handler=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return the process exit code (0 ok, 2 bad input, 3 missing, 130 cancel)."""
    args = build_parser().parse_args(argv)
    reporter: Reporter = JsonLinesReporter() if args.progress == "json" else TextReporter()
    reporter.emit(
        "start",
        protocol=PROTOCOL_VERSION,
        command=args.command,
        version=plugin_files.version(),
        pid=os.getpid(),
    )
    raise_cancelled_on_signals()
    handler: Command = args.handler
    try:
        handler(args, reporter)
    except SegmentPluginError as exc:
        reporter.emit("error", code=exc.code, message=str(exc))
        status = "cancelled" if isinstance(exc, CancelledError) else "error"
        reporter.emit("end", status=status, exit_code=exc.exit_code)
        return exc.exit_code
    except Exception as exc:  # a bug: one clear line, the traceback only on request
        if args.debug:
            traceback.print_exc()
        message = f"internal error ({type(exc).__name__}: {exc}); rerun with --debug for details"
        reporter.emit("error", code="internal_error", message=message)
        reporter.emit("end", status="error", exit_code=1)
        return 1
    reporter.emit("end", status="ok", exit_code=0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
