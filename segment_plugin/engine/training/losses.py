"""Losses for segmentation with an ignore index, written with Keras 3 ops (any backend).

``y_true`` holds class indices (batch, h, w), ``IGNORE_INDEX`` where unlabelled; ``y_pred`` holds
softmax probabilities (batch, h, w, classes). Every loss averages over labelled pixels only.

Partial labels: a pixel of a partially labelled set that is "some class the set does not name"
holds ``OTHER_BASE`` + the bit mask of the classes the set names (:func:`other_target`). The
cross-entropy and focal terms take the marginal there, −log Σ_{c not named} p_c (Shi et al. 2021,
"marginal loss"); Dice and Lovász are computed on pixels of a known class only. Without such
pixels every loss is exactly what it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from segment_plugin.engine.params import CLASS_WEIGHT_SCHEMES, LOSS_NAMES

EPSILON = 1e-7
OTHER_BASE = 256  # y_true ≥ this: "other", the bits above it name the set's labelled classes


def other_target(labelled: Sequence[int]) -> int:
    """The ``y_true`` value of an *other* pixel in a set labelling these class indices."""
    return OTHER_BASE + sum(1 << int(c) for c in set(labelled))


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
    """Class indices made safe to gather, the known-class mask, clipped probabilities."""
    ops = _keras().ops
    y_true = ops.cast(ops.reshape(y_true, ops.shape(y_pred)[:-1]), "int32")
    known = ops.less(y_true, ops.shape(y_pred)[-1])
    safe = ops.where(known, y_true, ops.zeros_like(y_true))
    return safe, ops.cast(known, y_pred.dtype), ops.clip(y_pred, EPSILON, 1.0)


def _allowed(y_true: Any, y_pred: Any) -> Any:
    """(…, classes) 1 where an *other* pixel may be that class (not named by its set), else 0."""
    ops = _keras().ops
    classes = ops.shape(y_pred)[-1]
    y_true = ops.cast(ops.reshape(y_true, ops.shape(y_pred)[:-1]), "int32")
    other = ops.greater_equal(y_true, OTHER_BASE)
    named = ops.where(other, y_true - OTHER_BASE, ops.zeros_like(y_true))[..., None]
    powers = ops.cast(2 ** ops.arange(classes), "int32")
    bit = ops.mod(ops.floor_divide(named, powers), 2)
    return ops.cast(other, y_pred.dtype)[..., None] * ops.cast(1 - bit, y_pred.dtype)


def _weighted_nll(y_true: Any, y_pred: Any, class_weights: Any, gamma: float) -> Any:
    """Mean over labelled pixels of −w·(1 − p)^γ·log p (γ = 0: cross-entropy).

    p is the true class's probability, or for an *other* pixel the summed probability of the
    classes it may be; its weight w is those classes' weights averaged by the model's own
    posterior over them (held constant), so a marginal pixel counts as the class it is likely
    to be.
    """
    ops = _keras().ops
    safe, known, probs = _prepare(y_true, y_pred)
    allowed = _allowed(y_true, y_pred)
    is_other = ops.max(allowed, axis=-1)
    true_p = ops.take_along_axis(probs, ops.expand_dims(safe, -1), axis=-1)[..., 0]
    marginal = ops.clip(ops.sum(probs * allowed, axis=-1), EPSILON, 1.0)
    picked = ops.where(is_other > 0, marginal, true_p)
    weight = known + is_other
    if class_weights is not None:
        table = ops.convert_to_tensor(class_weights, probs.dtype)
        known_w = ops.take(table, safe)
        other_w = ops.stop_gradient(ops.sum(probs * allowed * table, axis=-1) / marginal)
        weight = known * known_w + is_other * other_w
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


def unnamed_distillation(y_true: Any, y_pred: Any, teacher: Any) -> Any:
    """Mean over *other* pixels of KL(teacher ‖ model) over the classes each may be.

    Both posteriors are renormalised over the classes the pixel's set does not name, so the
    term says nothing about named against unnamed (the marginal's job) and only keeps the base
    model's (``teacher``) odds among the unnamed ones, which the marginal leaves free
    (unbiased distillation, Cermelli et al. 2020, "MiB"). 0 without *other* pixels.
    """
    ops = _keras().ops
    allowed = _allowed(y_true, y_pred)
    is_other = ops.max(allowed, axis=-1)

    def renormalised(probs: Any) -> Any:
        probs = ops.clip(probs, EPSILON, 1.0) * allowed
        return probs / ops.maximum(ops.sum(probs, axis=-1, keepdims=True), EPSILON)

    target = ops.stop_gradient(renormalised(ops.cast(teacher, y_pred.dtype)))
    model = renormalised(y_pred)
    log_ratio = ops.log(ops.clip(target, EPSILON, 1.0)) - ops.log(ops.clip(model, EPSILON, 1.0))
    terms = ops.sum(target * log_ratio, axis=-1)  # target is 0 outside the allowed classes
    return ops.sum(terms) / ops.maximum(ops.sum(is_other), 1.0)


def with_distillation(loss: Any, classes: int, weight: float) -> Any:
    """``loss`` on the model's posteriors plus ``weight`` × :func:`unnamed_distillation`.

    For a model trained beside its teacher (training/distill.py): ``y_pred`` holds the model's
    ``classes`` channels, then the teacher's.
    """

    def distilled(y_true: Any, y_pred: Any) -> Any:
        model, teacher = y_pred[..., :classes], y_pred[..., classes:]
        return loss(y_true, model) + weight * unnamed_distillation(y_true, model, teacher)

    distilled.__name__ = f"{loss.__name__}_distilled"
    return distilled


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


def context_consistency(y_true: Any, y_pred: Any, centre: Any, margin: int) -> Any:
    """Mean over the centre's labelled pixels of KL(patch ‖ centre) between two posteriors.

    ``y_pred`` is the model on the whole patch, ``centre`` on its centre alone (padded back to
    the patch by ``margin`` on each side). The whole patch's posterior is held constant: with
    more context it is the better guess, and the term teaches the centre to reach it without.
    Pixels of unknown class (ignore: also a mosaic's padding) are left out; *other* pixels count.
    """
    ops = _keras().ops
    classes = ops.shape(y_pred)[-1]
    y_true = ops.cast(ops.reshape(y_true, ops.shape(y_pred)[:-1]), "int32")
    labelled = ops.logical_or(ops.less(y_true, classes), ops.greater_equal(y_true, OTHER_BASE))
    inner = slice(margin, -margin)
    weight = ops.cast(labelled[:, inner, inner], y_pred.dtype)
    target = ops.stop_gradient(ops.clip(y_pred[:, inner, inner], EPSILON, 1.0))
    guess = ops.clip(ops.cast(centre[:, inner, inner], y_pred.dtype), EPSILON, 1.0)
    terms = ops.sum(target * (ops.log(target) - ops.log(guess)), axis=-1)
    return ops.sum(terms * weight) / ops.maximum(ops.sum(weight), 1.0)


def with_consistency(loss: Any, classes: int, weight: float, margin: int) -> Any:
    """``loss`` on all but the last ``classes`` channels, plus ``weight`` × the consistency term.

    For a model trained beside its centre (training/context.py): ``y_pred``'s first channels are
    what ``loss`` takes (the model's posteriors, then maybe its teacher's), its last ``classes``
    the model's posteriors on the centre.
    """

    def consistent(y_true: Any, y_pred: Any) -> Any:
        rest, centre = y_pred[..., :-classes], y_pred[..., -classes:]
        term = context_consistency(y_true, rest[..., :classes], centre, margin)
        return loss(y_true, rest) + weight * term

    consistent.__name__ = f"{loss.__name__}_consistent"
    return consistent
