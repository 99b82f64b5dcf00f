"""`make check-backends`: the bundled model, saved under TensorFlow, agrees under JAX and torch.

Model packages are Keras 3 files built from standard layers only, so any Keras backend should
load them. This script runs twice: in the engine environment (TensorFlow) it writes reference
probabilities for a fixed input; in another backend's environment (.venv-jax, .venv-torch, made
by the Makefile target) it loads the same model with ``safe_mode=True``, predicts the same input
and compares. Only Keras and numpy are used here.
Prints one JSON object (the comparison) on the second run.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "resources" / "models" / "landcover" / "model.keras"
WORK = ROOT / "build" / "backends"
SIZE = 256


def predict() -> np.ndarray:
    import keras

    model = keras.saving.load_model(MODEL, compile=False, safe_mode=True)
    rng = np.random.default_rng(0)
    # a smooth random "image" (low-frequency noise) in the model's input range [0, 1]
    coarse = rng.random((1, SIZE // 32, SIZE // 32, model.inputs[0].shape[-1]), np.float32)
    image = np.kron(coarse, np.ones((1, 32, 32, 1), np.float32))
    return np.asarray(model.predict(image, verbose=0), np.float32)


def main() -> None:
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    WORK.mkdir(parents=True, exist_ok=True)
    probs = predict()
    reference = WORK / "tensorflow.npy"
    if backend == "tensorflow":
        np.save(reference, probs)
        return
    if not reference.exists():
        sys.exit(f"{reference} is missing: run this script under TensorFlow first")
    expected = np.load(reference)
    print(
        json.dumps(
            {
                "model": str(MODEL.relative_to(ROOT)),
                "backend": backend,
                "loaded_with_safe_mode": True,
                "max_abs_prob_difference_vs_tensorflow": float(np.abs(probs - expected).max()),
                "argmax_agreement": float((probs.argmax(-1) == expected.argmax(-1)).mean()),
            }
        )
    )


if __name__ == "__main__":
    main()
