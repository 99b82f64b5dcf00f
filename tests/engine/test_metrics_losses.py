"""Metrics and losses against values computed by hand, with ignore pixels and absent classes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from segment_plugin.engine.training import metrics
from segment_plugin.engine.training.losses import (
    class_weights,
    cross_entropy,
    dice,
    focal,
    inverse_sqrt_frequency_weights,
    lovasz,
    make_loss,
    median_frequency_weights,
)

IGN = metrics.IGNORE_INDEX


def test_confusion_matrix_ignores_255():
    truth = np.array([[0, 0, 1], [1, 2, IGN]])
    pred = np.array([[0, 1, 1], [1, 0, 2]])
    cm = metrics.confusion_matrix(truth, pred, 4)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]


def test_iou_dice_accuracy_by_hand():
    cm = np.array([[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    iou = metrics.per_class_iou(cm)
    # class 0: TP 1, FP 1, FN 1 → 1/3; class 1: 2/(2+1) ; class 2: 0/(0+1); class 3 absent → NaN
    assert iou[:3] == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert math.isnan(iou[3])
    assert metrics.mean_iou(cm) == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert metrics.per_class_dice(cm)[:3] == pytest.approx([0.5, 0.8, 0.0])
    assert metrics.pixel_accuracy(cm) == pytest.approx(3 / 5)
    rep = metrics.report(cm, ["a", "b", "c", "d"])
    assert rep["per_class_iou"]["d"] is None and rep["pixels"] == 5
    assert rep["confusion_matrix"][1] == [0, 2, 0, 0]


def test_a_class_absent_from_the_reference_has_no_iou_even_when_predicted():
    # class 2 is predicted once but never in the reference: no IoU, not 0 in the mean;
    # the stray pixel still costs class 1 (its FN)
    cm = np.array([[2, 0, 0], [0, 1, 1], [0, 0, 0]])
    iou = metrics.per_class_iou(cm)
    assert iou[:2] == pytest.approx([1.0, 0.5]) and math.isnan(iou[2])
    assert math.isnan(metrics.per_class_dice(cm)[2])
    assert metrics.mean_iou(cm) == pytest.approx(0.75)


def probs_and_labels():
    y_pred = np.array([[[[0.5, 0.5], [0.9, 0.1]], [[0.2, 0.8], [0.7, 0.3]]]], np.float32)
    y_true = np.array([[[0, IGN], [1, 0]]])
    return y_true, y_pred


def test_cross_entropy_by_hand():
    y_true, y_pred = probs_and_labels()
    expected = -(math.log(0.5) + math.log(0.8) + math.log(0.7)) / 3  # the ignore pixel drops out
    assert float(cross_entropy(y_true, y_pred)) == pytest.approx(expected, rel=1e-5)
    weighted = -(1 * math.log(0.5) + 3 * math.log(0.8) + 1 * math.log(0.7)) / 5
    assert float(cross_entropy(y_true, y_pred, [1.0, 3.0])) == pytest.approx(weighted, rel=1e-5)


def test_focal_by_hand():
    y_true, y_pred = probs_and_labels()
    terms = [(1 - p) ** 2 * -math.log(p) for p in (0.5, 0.8, 0.7)]
    assert float(focal(y_true, y_pred)) == pytest.approx(sum(terms) / 3, rel=1e-5)


def test_dice_by_hand_and_perfect():
    y_true, y_pred = probs_and_labels()
    # labelled pixels: (0.5,0.5)→0, (0.2,0.8)→1, (0.7,0.3)→0 ; smooth 1
    d0 = (2 * (0.5 + 0.7) + 1) / (2 + (0.5 + 0.2 + 0.7) + 1)
    d1 = (2 * 0.8 + 1) / (1 + (0.5 + 0.8 + 0.3) + 1)
    assert float(dice(y_true, y_pred)) == pytest.approx(1 - (d0 + d1) / 2, rel=1e-5)
    perfect = np.eye(3, dtype=np.float32)[np.array([[[0, 1], [2, 1]]])]
    assert float(dice(np.array([[[0, 1], [2, 1]]]), perfect)) == pytest.approx(0.0, abs=1e-6)


def test_lovasz_by_hand():
    y_true, y_pred = probs_and_labels()
    # labelled pixels A (0.5,0.5)→0, B (0.2,0.8)→1, C (0.7,0.3)→0. Class 0: errors A 0.5, C 0.3,
    # B 0.2 (sorted); Jaccard loss after each: 1−1/2, 1−0/2, 1−0/3 → steps 0.5, 0.5, 0.
    class0 = 0.5 * 0.5 + 0.3 * 0.5 + 0.2 * 0.0
    # Class 1: errors A 0.5 (not 1), C 0.3 (not 1), B 0.2 (is 1); Jaccard 1−1/2, 1−1/3, 1−0/3.
    class1 = 0.5 * 0.5 + 0.3 * (1 / 6) + 0.2 * (1 / 3)
    assert float(lovasz(y_true, y_pred)) == pytest.approx((class0 + class1) / 2, rel=1e-5)
    moved = y_pred.copy()
    moved[0, 0, 1] = [0.0, 1.0]  # the unlabelled pixel's prediction changes nothing
    assert float(lovasz(y_true, moved)) == pytest.approx(float(lovasz(y_true, y_pred)))


def test_lovasz_of_one_hot_predictions_is_one_minus_iou():
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 4, (2, 12, 12))  # class 4 absent: not averaged
    truth[0, :3] = IGN
    pred = rng.integers(0, 5, (2, 12, 12))
    ious = metrics.per_class_iou(metrics.confusion_matrix(truth, pred, 5))[:4]
    one_hot = np.eye(5, dtype=np.float32)[pred]
    assert float(lovasz(truth, one_hot)) == pytest.approx(1 - np.mean(ious), rel=1e-5)


def test_combined_losses_are_sums():
    y_true, y_pred = probs_and_labels()
    total = float(make_loss("ce+dice")(y_true, y_pred))
    assert total == pytest.approx(
        float(cross_entropy(y_true, y_pred)) + float(dice(y_true, y_pred))
    )
    total = float(make_loss("ce+lovasz", [1.0, 3.0])(y_true, y_pred))
    assert total == pytest.approx(
        float(cross_entropy(y_true, y_pred, [1.0, 3.0])) + float(lovasz(y_true, y_pred))
    )
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("hinge")


def test_median_frequency_weights():
    weights = median_frequency_weights([600, 300, 100, 0])
    # frequencies 0.6, 0.3, 0.1 → median 0.3
    assert weights.tolist() == pytest.approx([0.5, 1.0, 3.0, 0.0])


def test_inverse_sqrt_frequency_weights_and_scheme_names():
    weights = inverse_sqrt_frequency_weights([600, 300, 100, 0])
    # 1/sqrt(freq) = 1.291, 1.826, 3.162 → mean 2.093 → 0.617, 0.872, 1.511
    assert weights.tolist() == pytest.approx([0.6168, 0.8723, 1.5109, 0.0], abs=1e-4)
    assert class_weights("none", [1, 2]) is None
    assert class_weights("median_frequency", [600, 300, 100, 0]).tolist() == pytest.approx(
        [0.5, 1.0, 3.0, 0.0]
    )
    with pytest.raises(ValueError, match="unknown class weighting"):
        class_weights("balanced", [1, 2])
