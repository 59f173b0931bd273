"""Segmentation scores from one confusion matrix over the labelled pixels, mmseg's definitions.

Counts are summed over the whole evaluation set before any ratio (dataset-level IoU, as mmseg's
``total_intersect_and_union``), and only pixels whose ground truth is not the ignore index count,
in the prediction areas too. With ``M[g, p]`` the number of such pixels of true class g predicted p:

- ``IoU_c = M[c, c] / (Σ_p M[c, p] + Σ_g M[g, c] − M[c, c])``; a class absent from both the ground
  truth and the prediction has union 0 and IoU NaN;
- ``mIoU = nanmean_c IoU_c``: the mean over the classes present in the ground truth or the prediction
  (a class predicted but absent from the ground truth scores 0 and counts);
- ``pixel accuracy = Σ_c M[c, c] / Σ M`` (mmseg's ``aAcc``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from epcache.errors import ConfigError

__all__ = ["SegMetrics", "confusion_matrix", "majority_class", "seg_metrics"]


@dataclass(frozen=True)
class SegMetrics:
    """The scores of one prediction of an evaluation set, and the counts they come from."""

    miou: float  # NaN only when no pixel is labelled
    pixel_acc: float
    per_class_iou: np.ndarray  # [C] float64, NaN for a class absent from ground truth and prediction
    confusion: np.ndarray  # [C, C] int64, [true][predicted]

    def to_json(self) -> dict[str, object]:
        """Plain numbers; a NaN IoU becomes ``None`` (JSON has no NaN)."""
        return {
            "miou": None if np.isnan(self.miou) else self.miou,
            "pixel_acc": None if np.isnan(self.pixel_acc) else self.pixel_acc,
            "per_class_iou": [None if np.isnan(v) else float(v) for v in self.per_class_iou],
        }


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, *, num_classes: int, ignore_index: int) -> np.ndarray:
    """``[C, C]`` int64 counts ``[true][predicted]`` of the pixels whose ground truth is labelled.

    Raises:
        ConfigError: shapes differ, or a labelled pixel's truth or prediction is outside ``[0, C)``.
    """
    if gt.shape != pred.shape:
        raise ConfigError(f"prediction shape {pred.shape} differs from the label shape {gt.shape}")
    g = gt.astype(np.int64).ravel()
    p = pred.astype(np.int64).ravel()
    keep = g != ignore_index
    g, p = g[keep], p[keep]
    if g.size and (g.min() < 0 or g.max() >= num_classes or p.min() < 0 or p.max() >= num_classes):
        raise ConfigError(f"labels and predictions must be in [0, {num_classes}) or the ignore index {ignore_index}")
    return np.bincount(g * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def seg_metrics(confusion: np.ndarray) -> SegMetrics:
    """mIoU, per-class IoU and pixel accuracy of a confusion matrix (definitions in the module docstring)."""
    conf = np.asarray(confusion, dtype=np.int64)
    inter = np.diag(conf).astype(np.float64)
    union = conf.sum(1) + conf.sum(0) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1), np.nan)
    total = conf.sum()
    miou = float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
    acc = float(inter.sum() / total) if total else float("nan")
    return SegMetrics(miou, acc, iou, conf)


def majority_class(patch_or_pixel_labels: np.ndarray, *, num_classes: int, ignore_index: int) -> int:
    """The most frequent labelled class of the training labels (ties to the lowest index).

    Predicting it at every pixel is the floor a dense head has to beat: its pixel accuracy is the
    class's share and its mIoU about that share over the number of classes present.

    Raises:
        ConfigError: no labelled pixel.
    """
    lab = patch_or_pixel_labels.astype(np.int64).ravel()
    lab = lab[lab != ignore_index]
    if not lab.size:
        raise ConfigError("the training labels hold no labelled pixel (every pixel is the ignore index)")
    return int(np.bincount(lab, minlength=num_classes).argmax())
