"""Install time and size of the two engine kinds, each in a fresh venv, printed as JSON.

What the engine setup dialog installs (engine_setup.setup_steps: the pinned requirements with
constraints.txt) into build/engines/{full,light}. pip's cache is whatever this machine has (warm
after make setup), so the times are installs from a local cache, not first downloads.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from segment_plugin.engine_setup import ENGINE_KINDS, setup_steps  # noqa: E402

WORK = ROOT / "build" / "engines"


def folder_mb(path: Path) -> float:
    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
    return round(total / 1e6, 1)


def main() -> None:
    report = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count()}}
    for kind in ENGINE_KINDS:
        target = WORK / kind
        shutil.rmtree(target, ignore_errors=True)
        started = time.perf_counter()
        for step in setup_steps(target, Path(sys.executable).resolve(), kind=kind):
            subprocess.run(step.command, check=True, capture_output=True)
        seconds = round(time.perf_counter() - started, 1)
        report[kind] = {"install_s": seconds, "mb": folder_mb(target)}
    report["size_ratio_light_over_full"] = round(report["light"]["mb"] / report["full"]["mb"], 3)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
