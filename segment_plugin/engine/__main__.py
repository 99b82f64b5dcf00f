"""``python -m segment_plugin.engine``: how the QGIS side starts the engine."""

import sys

from segment_plugin.engine.cli import main

sys.exit(main())
