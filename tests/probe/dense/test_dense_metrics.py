"""Confusion, IoU, mIoU (mmseg's convention) and pixel accuracy: a hand example and a numpy reference."""

from __future__ import annotations

import numpy as np
import pytest

from epcache.errors import ConfigError
from epcache.probe.dense.metrics import confusion_matrix, majority_class, seg_metrics

IGN = 255


def test_hand_computed_example() -> None:
    gt = np.array([[0, 0, 1, 1], [2, 2, IGN, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 3, 3]])  # the pixel under ignore predicted 3: not counted
    conf = confusion_matrix(gt, pred, num_classes=5, ignore_index=IGN)
    assert conf.sum() == 7
    m = seg_metrics(conf)
    # class 0: inter 1, gt 2, pred 2 -> 1/3; class 1: inter 2, gt 3, pred 3 -> 2/4; class 2: inter 1, gt 2,
    # pred 1 -> 1/2; class 3: gt 0, pred 1 (the labelled one) -> 0; class 4: absent from both -> NaN, skipped
    np.testing.assert_allclose(m.per_class_iou[:4], [1 / 3, 1 / 2, 1 / 2, 0.0])
    assert np.isnan(m.per_class_iou[4])
    assert m.miou == pytest.approx((1 / 3 + 1 / 2 + 1 / 2 + 0) / 4)
    assert m.pixel_acc == pytest.approx(4 / 7)
    assert m.to_json()["per_class_iou"][4] is None


def _reference(gt: np.ndarray, pred: np.ndarray, classes: int) -> tuple[np.ndarray, float, float]:
    keep = gt != IGN
    g, p = gt[keep], pred[keep]
    ious = []
    for c in range(classes):
        inter = np.sum((g == c) & (p == c))
        union = np.sum((g == c) | (p == c))
        ious.append(inter / union if union else np.nan)
    iou = np.array(ious)
    return iou, float(np.nanmean(iou)), float(np.mean(g == p))


def test_matches_a_numpy_reference_over_a_dataset() -> None:
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 6, size=(5, 16, 16))
    gt[rng.random(gt.shape) < 0.2] = IGN
    pred = np.where(rng.random(gt.shape) < 0.7, np.where(gt == IGN, 0, gt), rng.integers(0, 7, size=gt.shape))
    conf = sum(confusion_matrix(gt[i], pred[i], num_classes=7, ignore_index=IGN) for i in range(5))
    m = seg_metrics(conf)  # counts summed over images before the ratio, as over the whole array
    iou, miou, acc = _reference(gt, pred, 7)
    np.testing.assert_allclose(m.per_class_iou, iou)
    assert m.miou == pytest.approx(miou)
    assert m.pixel_acc == pytest.approx(acc)
    np.testing.assert_array_equal(conf, confusion_matrix(gt, pred, num_classes=7, ignore_index=IGN))


def test_majority_class_and_errors() -> None:
    lab = np.array([[1, 1, 2, 2, IGN, IGN, IGN]])
    assert majority_class(lab, num_classes=3, ignore_index=IGN) == 1  # tie 1 vs 2 -> lowest
    with pytest.raises(ConfigError, match="no labelled"):
        majority_class(np.full((2, 2), IGN), num_classes=3, ignore_index=IGN)
    with pytest.raises(ConfigError, match="shape"):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), num_classes=3, ignore_index=IGN)
    with pytest.raises(ConfigError, match=r"\[0, 3\)"):
        confusion_matrix(np.zeros((2, 2)), np.full((2, 2), 3), num_classes=3, ignore_index=IGN)
    empty = seg_metrics(np.zeros((3, 3), dtype=np.int64))
    assert np.isnan(empty.miou) and np.isnan(empty.pixel_acc)
