"""Which device Keras runs on, under any Keras backend.

The engine runs on TensorFlow; a lent GPU machine has JAX and torch but no TensorFlow, and the
bundled model is trained there with ``KERAS_BACKEND=jax`` or ``torch``. So the device is chosen
through Keras (``keras.device``), and only the question "is there a GPU?" asks the backend.
"""

from __future__ import annotations

import os

from segment_plugin.engine.errors import InputError

# "cpu", not "cpu:0": under Keras' torch backend a variable created in keras.device("cpu:0")
# is moved from torch's "cpu" to "cpu:0", a copy that is no longer a trainable leaf, and training
# fails with "No gradients provided for any variable" (Keras 3.15.1, torch 2.11.0)
CPU = "cpu"
GPU = "gpu:0"


def gpu_available() -> bool:
    """Whether the active Keras backend sees a GPU."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return any(d.platform == "gpu" for d in jax.devices())
    if backend == "torch":
        import torch

        return bool(torch.cuda.is_available())
    return False


def select_device(device: str) -> str:
    """``keras.device`` name to run on; ``auto`` takes a GPU when there is one."""
    import keras

    gpu = gpu_available()
    if device == "gpu" and not gpu:
        raise InputError(
            f"--device gpu: Keras ({keras.backend.backend()}) sees no GPU in this engine "
            "environment"
        )
    return GPU if gpu and device != "cpu" else CPU


def patch_workers(requested: int | None, device: str) -> int:
    """Threads cutting training patches: as requested, else 1 on the CPU, up to 8 with a GPU.

    On this project's 2-core CPU one thread cuts ~60 patches a second through Keras while the
    model trains on ~7, so more would only take cores from the model; a GPU trains on far more
    than one thread cuts.
    """
    if requested is not None:
        return requested
    return 1 if device == CPU else min(8, os.cpu_count() or 1)


def describe(device: str) -> str:
    """Where a model was trained, for its card: ``GPU H100 (jax 0.10.2, Keras 3.15.1)``."""
    import keras

    backend = keras.backend.backend()
    module = __import__(backend)
    where = f"CPU, {os.cpu_count()} cores"
    if device == GPU:
        where = "GPU"
        if backend == "torch":
            where += f" {module.cuda.get_device_name(0)}"
        elif backend == "jax":
            where += f" {module.devices()[0].device_kind}"
    return f"{where} ({backend} {module.__version__}, Keras {keras.__version__})"
