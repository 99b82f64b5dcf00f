"""On PYTHONPATH, makes this Python an inference-only engine: TensorFlow and Keras do not import.

The full engine's tests start the CLI with it to prove the inference-only engine's commands
never reach for TensorFlow (``make check-light`` runs them in a real one).
"""

import importlib.abc
import sys

BLOCKED = {"tensorflow", "keras", "tf2onnx", "tf_keras"}


class _NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(
                f"No module named {name!r} (inference-only engine)", name=name
            )
        return None


sys.meta_path.insert(0, _NoTensorFlow())
