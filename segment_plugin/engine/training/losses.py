"""Losses for segmentation with an ignore index, written with Keras 3 ops (any backend).

``y_true`` holds class indices (batch, h, w), ``IGNORE_INDEX`` where unlabelled; ``y_pred`` holds
softmax probabilities (batch, h, w, classes). Every loss averages over labelled pixels only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from segment_plugin.engine.params import CLASS_WEIGHT_SCHEMES, LOSS_NAMES
from segment_plugin.engine.training.metrics import IGNORE_INDEX

EPSILON = 1e-7


def _keras() -> Any:
    from segment_plugin.engine.models.package import _keras as load

    return load()


def _balanced(pixel_counts: Sequence[int], weigh: Any) -> np.ndarray:
    """``weigh(frequencies)`` for the classes present; 0 for absent ones; all 1 if none is."""
    counts = np.asarray(pixel_counts, np.float64)
    present = counts > 0
    if not present.any():
        return np.ones_like(counts, dtype=np.float32)
    weights = np.zeros_like(counts)
    weights[present] = weigh(counts[present] / counts.sum())
    return weights.astype(np.float32)


def median_frequency_weights(pixel_counts: Sequence[int]) -> np.ndarray:
    """Median-frequency balancing: median(freq) / freq(class); 0 for absent classes."""
    return _balanced(pixel_counts, lambda freq: np.median(freq) / freq)


def inverse_sqrt_frequency_weights(pixel_counts: Sequence[int]) -> np.ndarray:
    """1 / sqrt(freq), scaled to mean 1 over present classes; 0 for absent classes.

    A softer balance than median frequency. (Plain inverse frequency is not offered: scaled
    to mean 1 it is median-frequency balancing times a constant, the same weighting.)
    """

    def weigh(freq: np.ndarray) -> np.ndarray:
        weights = 1 / np.sqrt(freq)
        return weights / weights.mean()

    return _balanced(pixel_counts, weigh)


def class_weights(scheme: str, pixel_counts: Sequence[int]) -> np.ndarray | None:
    """Per-class loss weights for a scheme in CLASS_WEIGHT_SCHEMES (None: unweighted)."""
    if scheme == "median_frequency":
        return median_frequency_weights(pixel_counts)
    if scheme == "inverse_sqrt_frequency":
        return inverse_sqrt_frequency_weights(pixel_counts)
    if scheme == "none":
        return None
    choices = ", ".join(CLASS_WEIGHT_SCHEMES)
    raise ValueError(f"unknown class weighting {scheme!r}; choose one of {choices}")


def _prepare(y_true: Any, y_pred: Any) -> tuple[Any, Any, Any]:
    ops = _keras().ops
    y_true = ops.cast(ops.reshape(y_true, ops.shape(y_pred)[:-1]), "int32")
    labelled = ops.not_equal(y_true, IGNORE_INDEX)
    safe = ops.where(labelled, y_true, ops.zeros_like(y_true))
    return safe, ops.cast(labelled, y_pred.dtype), ops.clip(y_pred, EPSILON, 1.0)


def _weighted_nll(y_true: Any, y_pred: Any, class_weights: Any, gamma: float) -> Any:
    """Mean over labelled pixels of −w·(1 − p_true)^γ·log p_true (γ = 0: cross-entropy)."""
    ops = _keras().ops
    safe, labelled, probs = _prepare(y_true, y_pred)
    picked = ops.take_along_axis(probs, ops.expand_dims(safe, -1), axis=-1)[..., 0]
    weight = labelled
    if class_weights is not None:
        weight = weight * ops.take(ops.convert_to_tensor(class_weights, probs.dtype), safe)
    terms = -ops.log(picked) * weight
    if gamma:
        terms = terms * (1.0 - picked) ** gamma
    return ops.sum(terms) / ops.maximum(ops.sum(weight), EPSILON)


def cross_entropy(y_true: Any, y_pred: Any, class_weights: Any = None) -> Any:
    """Class-weighted cross-entropy over labelled pixels (weighted mean)."""
    return _weighted_nll(y_true, y_pred, class_weights, gamma=0.0)


def focal(y_true: Any, y_pred: Any, class_weights: Any = None, gamma: float = 2.0) -> Any:
    """Focal loss (Lin et al.): cross-entropy scaled by (1 - p_true)^gamma."""
    return _weighted_nll(y_true, y_pred, class_weights, gamma)


def dice(y_true: Any, y_pred: Any, smooth: float = 1.0) -> Any:
    """1 − soft Dice, averaged over the classes present in the reference or the prediction."""
    ops = _keras().ops
    safe, labelled, probs = _prepare(y_true, y_pred)
    classes = ops.shape(probs)[-1]
    onehot = ops.one_hot(safe, classes, dtype=probs.dtype) * labelled[..., None]
    probs = probs * labelled[..., None]
    axes = tuple(range(len(probs.shape) - 1))
    intersection = ops.sum(onehot * probs, axis=axes)
    total = ops.sum(onehot, axis=axes) + ops.sum(probs, axis=axes)
    score = (2.0 * intersection + smooth) / (total + smooth)
    present = ops.cast(ops.greater(ops.sum(onehot, axis=axes), 0), probs.dtype)
    return 1.0 - ops.sum(score * present) / ops.maximum(ops.sum(present), 1.0)


def lovasz(y_true: Any, y_pred: Any) -> Any:
    """Lovász-softmax (Berman et al., CVPR 2018), over the whole batch as one image.

    A convex surrogate of 1 − IoU per class, averaged over the classes present in the
    reference: the quantity the card reports (mIoU) rather than a per-pixel proxy. For one-hot
    predictions it equals 1 − IoU exactly. Each class's pixel errors |onehot − p| are sorted in
    descending order and weighted by the change in the Jaccard loss that each one adds.
    """
    ops = _keras().ops
    safe, labelled, probs = _prepare(y_true, y_pred)
    classes = ops.shape(probs)[-1]
    onehot = ops.reshape(ops.one_hot(safe, classes, dtype=probs.dtype), (-1, classes))
    labelled = ops.reshape(labelled, (-1, 1))
    onehot = onehot * labelled
    # Unlabelled pixels get error 0 and no reference: they sort last and add nothing.
    errors = ops.abs(onehot - ops.reshape(probs, (-1, classes))) * labelled
    order = ops.argsort(-errors, axis=0)
    errors = ops.take_along_axis(errors, order, axis=0)
    reference = ops.take_along_axis(onehot, order, axis=0)
    total = ops.sum(onehot, axis=0)
    intersection = total - ops.cumsum(reference, axis=0)
    union = total + ops.cumsum(1.0 - reference, axis=0)
    jaccard = 1.0 - intersection / union
    steps = ops.concatenate([jaccard[:1], jaccard[1:] - jaccard[:-1]], axis=0)
    per_class = ops.sum(errors * ops.stop_gradient(steps), axis=0)
    present = ops.cast(ops.greater(total, 0), probs.dtype)
    return ops.sum(per_class * present) / ops.maximum(ops.sum(present), 1.0)


def make_loss(name: str, class_weights: Sequence[float] | None = None) -> Any:
    """A Keras-compatible loss function by name, one of LOSS_NAMES.

    Class weights apply to the cross-entropy and focal parts only.
    """
    if name not in LOSS_NAMES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSS_NAMES)}")
    weights = None if class_weights is None else np.asarray(class_weights, np.float32)
    parts = name.split("+")

    def loss(y_true: Any, y_pred: Any) -> Any:
        total = 0.0
        for part in parts:
            if part == "ce":
                total = total + cross_entropy(y_true, y_pred, weights)
            elif part == "focal":
                total = total + focal(y_true, y_pred, weights)
            elif part == "lovasz":
                total = total + lovasz(y_true, y_pred)
            else:
                total = total + dice(y_true, y_pred)
        return total

    loss.__name__ = name.replace("+", "_plus_")
    return loss
