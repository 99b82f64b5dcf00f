"""Segmentation metrics from a confusion matrix accumulated over any number of batches.

Labels here are class *indices* (model output channels); pixels labelled ``ignore_index`` count
nowhere. A class absent from the reference has no IoU (None in reports, NaN in arrays) and does
not count in the mean, even where it is predicted: its stray pixels already count against the
classes they belong to, and a held-out split without, say, water would otherwise score water 0 or
nothing as a handful of pixels come and go (which moved a training run's best epoch).

A partially labelled set names only some classes; its other pixels (``OTHER_INDEX``) are "some
class not named here". There a labelled class's IoU is measured against the rest (an *other*
pixel predicted as that class is a false positive), and no other class has an IoU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

IGNORE_INDEX = 255
OTHER_INDEX = 254  # a partially labelled set's "some class it does not name"


def confusion_matrix(
    truth: np.ndarray, prediction: np.ndarray, classes: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """(classes, classes) counts: rows are the reference, columns the prediction."""
    truth = np.asarray(truth).ravel()
    prediction = np.asarray(prediction).ravel()
    keep = (truth != ignore_index) & (truth < classes)
    pairs = truth[keep].astype(np.int64) * classes + prediction[keep].astype(np.int64)
    return np.bincount(pairs, minlength=classes * classes).reshape(classes, classes)


def confusion_with_other(truth: np.ndarray, prediction: np.ndarray, classes: int) -> np.ndarray:
    """(classes + 1, classes) counts: :func:`confusion_matrix` plus a last row for *other*."""
    truth = np.asarray(truth).ravel()
    rows = np.where(truth == OTHER_INDEX, classes, truth)
    return confusion_matrix(rows, prediction, classes + 1)[:, :classes]


def per_class_iou(matrix: np.ndarray) -> np.ndarray:
    """TP / (TP + FP + FN) per class; NaN where the class is absent from the reference."""
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(matrix.sum(1) > 0, tp / union, np.nan)


def per_class_dice(matrix: np.ndarray) -> np.ndarray:
    """2 TP / (2 TP + FP + FN) per class; NaN where the class is absent from the reference."""
    tp = np.diag(matrix).astype(np.float64)
    total = matrix.sum(0) + matrix.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(matrix.sum(1) > 0, 2 * tp / total, np.nan)


def mean_iou(matrix: np.ndarray) -> float:
    """Mean of the defined per-class IoUs (NaN if none is defined)."""
    values = per_class_iou(matrix)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def pixel_accuracy(matrix: np.ndarray) -> float:
    """Share of non-ignore pixels classified right."""
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total else float("nan")


def _named(values: np.ndarray, names: Sequence[str]) -> dict[str, float | None]:
    return {n: (None if np.isnan(v) else round(float(v), 5)) for n, v in zip(names, values)}


def _partial(matrix: np.ndarray, labelled: Sequence[int]) -> tuple[np.ndarray, np.ndarray, float]:
    """IoU and Dice of the labelled classes, each against the rest; pixel accuracy.

    ``matrix`` is :func:`confusion_with_other`'s. An *other* pixel is right when predicted as any
    class the set does not label.
    """
    classes = matrix.shape[1]
    tp = np.diag(matrix[:classes]).astype(np.float64)
    fp = matrix.sum(0) - tp
    fn = matrix[:classes].sum(1) - tp
    named = np.zeros(classes, bool)
    named[list(labelled)] = True
    with np.errstate(invalid="ignore", divide="ignore"):
        present = named & (tp + fn > 0)
        iou = np.where(present, tp / (tp + fp + fn), np.nan)
        dice = np.where(present, 2 * tp / (2 * tp + fp + fn), np.nan)
    right = tp[named].sum() + matrix[classes, ~named].sum()
    total = matrix.sum()
    return iou, dice, float(right / total) if total else float("nan")


def report(
    matrix: np.ndarray, names: Sequence[str], labelled: Sequence[int] | None = None
) -> dict[str, Any]:
    """The metrics as JSON-ready values, per-class entries keyed by class name.

    ``labelled``: the class indices a partially labelled set names, with ``matrix`` from
    :func:`confusion_with_other`; only they get an IoU (each against the rest).
    """
    if labelled is not None:
        iou, dice, accuracy = _partial(matrix, labelled)
        miou = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
    else:
        iou, dice = per_class_iou(matrix), per_class_dice(matrix)
        miou, accuracy = mean_iou(matrix), pixel_accuracy(matrix)
    result = {
        "miou": None if np.isnan(miou) else round(miou, 5),
        "per_class_iou": _named(iou, names),
        "per_class_dice": _named(dice, names),
        "pixel_accuracy": None if np.isnan(accuracy) else round(accuracy, 5),
        "confusion_matrix": matrix.astype(int).tolist(),
        "classes": list(names),
        "pixels": int(matrix.sum()),
    }
    if labelled is not None:
        result["labelled_classes"] = [names[i] for i in labelled]
        result["partial_labels"] = (
            "partially labelled set: IoU only for "
            + ", ".join(names[i] for i in labelled)
            + ", each against the rest (the last confusion row is 'other')"
        )
    return result


def report_with_other(
    matrix: np.ndarray, names: Sequence[str], labelled: Sequence[int] | None
) -> dict[str, Any]:
    """:func:`report` of a :func:`confusion_with_other` matrix.

    A fully labelled set (``labelled`` None) has no *other* row to report.
    """
    return report(matrix if labelled is not None else matrix[:-1], names, labelled)
