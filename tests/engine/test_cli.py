"""The engine CLI and its JSON-lines protocol, through a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import ROOT, events, run_cli

from segment_plugin import plugin_files
from segment_plugin.engine import cli, info
from segment_plugin.engine.errors import DependencyError


def test_info_json_reports_tensorflow_and_cpu():
    proc = run_cli("info", "--progress", "json")
    assert proc.returncode == 0, proc.stderr
    stream = events(proc.stdout)
    assert stream[0] == {
        "event": "start",
        "protocol": 1,
        "command": "info",
        "version": plugin_files.version(),
        "pid": stream[0]["pid"],
    }
    assert stream[0]["pid"] > 0
    assert stream[-1] == {"event": "end", "status": "ok", "exit_code": 0}
    (result,) = [e["data"] for e in stream if e["event"] == "result"]
    assert result["ready"] is True
    assert result["missing"] == [] and result["kind"] == "full"
    assert result["packages"]["tensorflow"].startswith("2.")
    assert result["packages"]["keras"].startswith("3.")
    assert any(d["type"] == "CPU" for d in result["devices"])
    assert result["executable"] == sys.executable


def test_info_text_is_for_people():
    proc = run_cli("info", "--no-devices")
    assert proc.returncode == 0, proc.stderr
    assert "segment_plugin engine" in proc.stdout
    assert "tensorflow" in proc.stdout and "ready" in proc.stdout
    assert not proc.stdout.lstrip().startswith("{")


def test_version_comes_from_metadata_txt():
    proc = run_cli("--version")
    assert proc.stdout.strip() == plugin_files.version()
    metadata = (ROOT / "metadata.txt").read_text()
    assert f"version={proc.stdout.strip()}" in metadata


def test_usage_error_is_one_message_and_exit_2():
    proc = run_cli("no-such-command")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_stray_prints_cannot_corrupt_the_json_stream(monkeypatch, capfd):
    """Libraries that print to stdout (Python or C level) must land on stderr in JSON mode."""

    def noisy(args, reporter):
        print("python-level noise")
        os.write(1, b"C-level noise\n")
        reporter.progress(0.5, "half")
        reporter.result(answer=42)

    parser = cli.build_parser()
    original = parser.parse_args

    def parse_args(argv):
        ns = original(argv)
        ns.handler = noisy
        return ns

    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr(parser, "parse_args", parse_args)
    saved_stdout_fd = os.dup(1)
    saved_stdout = sys.stdout
    try:
        assert cli.main(["info", "--progress", "json"]) == 0
    finally:
        os.dup2(saved_stdout_fd, 1)
        os.close(saved_stdout_fd)
        sys.stdout = saved_stdout
    out, err = capfd.readouterr()
    stream = events(out)
    assert [e["event"] for e in stream] == ["start", "progress", "result", "end"]
    assert stream[1] == {"event": "progress", "fraction": 0.5, "message": "half"}
    assert "python-level noise" in err and "C-level noise" in err


def test_sigterm_cancels_with_one_event_and_exit_130(tmp_path):
    """What the QGIS side's Cancel does: SIGTERM → CancelledError → 'cancelled' end event."""
    script = tmp_path / "slow_command.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, time
            from segment_plugin.engine import cli

            def slow(args, reporter):
                reporter.progress(0.1, "working")
                time.sleep(60)

            parser = cli.build_parser()
            original = parser.parse_args
            def parse_args(argv):
                ns = original(argv)
                ns.handler = slow
                return ns
            parser.parse_args = parse_args
            cli.build_parser = lambda: parser
            sys.exit(cli.main(["info", "--progress", "json"]))
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    seen = [json.loads(proc.stdout.readline()) for _ in range(2)]  # start, progress
    assert seen[1]["event"] == "progress"
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert time.monotonic() - started < 10
    assert proc.returncode == 130
    tail = events(out)
    assert tail[0]["event"] == "error" and tail[0]["code"] == "cancelled"
    assert tail[-1] == {"event": "end", "status": "cancelled", "exit_code": 130}


def test_gdal_block_cache_is_bounded_unless_the_environment_sets_it(monkeypatch, capsys):
    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    assert cli.main(["models"]) == 0
    assert os.environ["GDAL_CACHEMAX"] == cli.GDAL_CACHE_MB
    monkeypatch.setenv("GDAL_CACHEMAX", "1024")
    assert cli.main(["models"]) == 0
    assert os.environ["GDAL_CACHEMAX"] == "1024"


def test_text_mode_prints_only_our_lines(tmp_path, tiny_model):
    """No TensorFlow/absl start-up chatter: each stderr line is progress, a log or an error."""
    from conftest import scene, write_raster

    raster = write_raster(tmp_path / "in.tif", scene(64, 64))
    command = [sys.executable, "-m", "segment_plugin.engine", "segment", str(raster)]
    command += ["--output", str(tmp_path / "out.tif"), "--model", str(tiny_model)]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    ours = ("[", "model ", "warning: ", "the raster ")
    foreign = [line for line in proc.stderr.splitlines() if not line.startswith(ours)]
    assert foreign == []
    assert proc.stdout.startswith("wrote ")
    # --debug keeps the libraries' lines: there are some to hide (TensorFlow 2.21's absl notice)
    debug = subprocess.run(
        command + ["--overwrite", "--debug"], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert debug.returncode == 0
    assert [line for line in debug.stderr.splitlines() if not line.startswith(ours)]


def test_info_without_devices_stays_light():
    """The quiet Keras pre-import is not for `info --no-devices` (0.1 s, not 3 s)."""
    script = (
        "import sys; from segment_plugin.engine import cli; cli.main(['info', '--no-devices']); "
        "print('keras' in sys.modules, file=sys.stderr)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0 and proc.stderr.strip().splitlines()[-1] == "False"


def test_training_needs_keras_and_its_backend_not_tensorflow_itself(monkeypatch):
    """A lent GPU machine trains under Keras on torch or JAX; it has no TensorFlow."""
    monkeypatch.setattr(info, "_importable", lambda name: name in {"keras", "torch"})
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    info.require_full_engine("training")
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    with pytest.raises(DependencyError, match="training needs the full engine"):
        info.require_full_engine("training")
