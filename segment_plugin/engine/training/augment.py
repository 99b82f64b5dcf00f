"""Augmentation of (image, labels) patches in numpy: geometry, scale, colour, noise.

Random scale 0.5–2× is applied when cutting a patch (see chips.py) and is what makes a model
robust to ground resolutions it was not trained at; here are resizing and the per-patch
transforms. Images are (bands, h, w) in raw units (before normalisation); labels (h, w).
"""

from __future__ import annotations

import numpy as np

from segment_plugin.engine.params import CONTRAST


def _shape(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resize_nearest(labels: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """(h, w) → (size, size) or ``size`` = (rows, cols), nearest neighbour (labels are codes)."""
    h, w = labels.shape
    out_h, out_w = _shape(size)
    rows = np.minimum((np.arange(out_h) + 0.5) * h / out_h, h - 1).astype(int)
    cols = np.minimum((np.arange(out_w) + 0.5) * w / out_w, w - 1).astype(int)
    return labels[rows[:, None], cols[None, :]]


def resize_bilinear(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """(bands, h, w) → (bands, size, size) or ``size`` = (rows, cols), bilinear (centre-aligned).

    Shrinking by more than 2× first averages whole blocks of pixels, so that fine detail is
    averaged (as a coarser sensor would) rather than skipped.
    """
    _, h, w = image.shape
    out_h, out_w = _shape(size)
    if (h, w) == (out_h, out_w):
        return image.astype(np.float32, copy=False)
    fy, fx = max(1, h // (2 * out_h)), max(1, w // (2 * out_w))
    if fy > 1 or fx > 1:
        h, w = h // fy * fy, w // fx * fx
        x = image[:, :h, :w].astype(np.float32, copy=False)
        image = x.reshape(x.shape[0], h // fy, fy, w // fx, fx).mean(axis=(2, 4))
        h, w = image.shape[1:]

    def axis(n: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(size) + 0.5) * n / size - 0.5, 0, n - 1)
        low = np.floor(pos).astype(int)
        high = np.minimum(low + 1, n - 1)
        return low, high, (pos - low).astype(np.float32)

    r0, r1, fr = axis(h, out_h)
    c0, c1, fc = axis(w, out_w)
    x = image.astype(np.float32, copy=False)
    top = x[:, r0][:, :, c0] * (1 - fc) + x[:, r0][:, :, c1] * fc
    bottom = x[:, r1][:, :, c0] * (1 - fc) + x[:, r1][:, :, c1] * fc
    return top * (1 - fr)[:, None] + bottom * fr[:, None]


def geometric(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
    """Random flips and 90° rotations (the 8 symmetries of a square), same for both."""
    k = int(rng.integers(4))
    image, labels = np.rot90(image, k, axes=(1, 2)), np.rot90(labels, k)
    if rng.random() < 0.5:
        image, labels = image[:, :, ::-1], labels[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)


def photometric(
    image: np.ndarray,
    value_range: float,
    rng: np.random.Generator,
    contrast: tuple[float, float] = CONTRAST,
) -> np.ndarray:
    """Brightness, contrast and per-band colour jitter, then Gaussian noise (raw units).

    Contrast scales each band's distance from the patch's mean by a factor drawn from
    ``contrast``: imagery differs much in it (Dubai's sea averages 28 on the 0–255 scale, its sand
    173; the demo orthophoto's river 81, its land 134).
    """
    x = image.astype(np.float32, copy=True)
    mean = x.mean(axis=(1, 2), keepdims=True)
    x = (x - mean) * rng.uniform(*contrast) + mean
    x *= rng.uniform(0.85, 1.15)  # brightness
    x *= rng.uniform(0.95, 1.05, size=(x.shape[0], 1, 1)).astype(np.float32)  # hue / white balance
    x += rng.normal(0.0, 0.01 * value_range * rng.uniform(0, 1), size=x.shape).astype(np.float32)
    return np.clip(x, 0.0, value_range)
