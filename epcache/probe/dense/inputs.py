"""What every dense head reads and returns: the arrays, the image-level holdout, scoring on the pixel grid.

The heads fit on patches but are scored on pixels, select their hyperparameters on a held-out part
of the TRAINING images (never the evaluation split) and report the same result record, so those
three pieces live once here. The holdout is drawn by image (by ``train_groups`` where several rows
are views of one image), never by patch: neighbouring patches of one image are near-duplicates and
a patch-level split would score the hyperparameters on what they were fitted on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
from torch import Tensor

from epcache.errors import ConfigError, ShapeMismatchError
from epcache.probe.dense.metrics import SegMetrics, confusion_matrix, seg_metrics
from epcache.probe.dense.patch_labels import patch_grid, patch_majority, upsample_labels, upsample_logits

__all__ = ["PREVIEW_IMAGES", "DenseData", "DenseResult", "as_tensor", "holdout_split", "labelled_patches",
           "score_patch_labels", "score_patch_scores"]

PREVIEW_IMAGES = 4  # evaluation images whose pixel predictions a result keeps (for a figure, not a metric)
SCORE_BATCH = 16  # evaluation images upsampled at once: C x H x W scores per image bound the memory


@dataclass(frozen=True)
class DenseData:
    """Patch features and pixel labels of a train and an evaluation split.

    Features are ``[n, h, w, D]`` (one layer, or several concatenated along D); labels ``[n, H, W]``
    with ``H = h * patch``; a pixel equal to ``ignore_index`` is unlabelled. ``train_groups[i]`` names
    the source image of train row i when rows are several views of one image (default: each row its own).
    """

    train_feats: np.ndarray
    train_labels: np.ndarray
    eval_feats: np.ndarray
    eval_labels: np.ndarray
    num_classes: int
    ignore_index: int = 255
    train_groups: np.ndarray | None = None

    def __post_init__(self) -> None:
        for name, feats, labels in (("train", self.train_feats, self.train_labels),
                                    ("eval", self.eval_feats, self.eval_labels)):
            if feats.ndim != 4 or labels.ndim != 3 or feats.shape[0] != labels.shape[0]:
                raise ShapeMismatchError(f"{name}: features must be [n, h, w, D] and labels [n, H, W] with the same "
                                         f"n, got {feats.shape} and {labels.shape}")
            if feats.shape[0] == 0:
                raise ConfigError(f"{name}: no images")
            patch_grid(labels.shape[1:], feats.shape[1:3])
        if self.train_feats.shape[1:] != self.eval_feats.shape[1:] or \
                self.train_labels.shape[1:] != self.eval_labels.shape[1:]:
            raise ShapeMismatchError(f"train and eval grids differ: {self.train_feats.shape[1:]} vs "
                                     f"{self.eval_feats.shape[1:]}, {self.train_labels.shape[1:]} vs "
                                     f"{self.eval_labels.shape[1:]}")
        if self.num_classes < 2:
            raise ConfigError(f"num_classes must be >= 2, got {self.num_classes}")
        if 0 <= self.ignore_index < self.num_classes:
            raise ConfigError(f"ignore_index {self.ignore_index} is a class index (num_classes={self.num_classes})")
        if self.train_groups is not None and self.train_groups.shape != (self.train_feats.shape[0],):
            raise ShapeMismatchError(f"train_groups must hold one id per train row ({self.train_feats.shape[0]}), "
                                     f"got shape {self.train_groups.shape}")

    @property
    def patch(self) -> int:
        """Pixels per patch side."""
        return self.train_labels.shape[1] // self.train_feats.shape[1]

    @cached_property
    def train_patch_labels(self) -> np.ndarray:
        """``[n, h, w]`` majority label of each training patch (patch_labels.patch_majority)."""
        return patch_majority(self.train_labels, self.patch, num_classes=self.num_classes,
                              ignore_index=self.ignore_index)


@dataclass(frozen=True)
class DenseResult:
    """One dense head's outcome on the evaluation split, with what the holdout chose."""

    kind: str
    metrics: SegMetrics  # on the evaluation split
    chosen: dict[str, object]  # the hyperparameters the holdout picked (and the fixed ones)
    holdout: list[tuple[dict[str, object], float]] = field(default_factory=list)  # (params, holdout mIoU) per config
    predictions: np.ndarray | None = None  # [<= PREVIEW_IMAGES, H, W] pixel predictions of the first eval images
    baseline: SegMetrics | None = None  # the majority class predicted everywhere

    @property
    def miou(self) -> float:
        return self.metrics.miou

    @property
    def pixel_acc(self) -> float:
        return self.metrics.pixel_acc

    @property
    def per_class_iou(self) -> np.ndarray:
        return self.metrics.per_class_iou


def holdout_split(n: int, groups: np.ndarray | None, *, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices ``(fit, holdout)``: ``ceil(fraction * images)`` whole images held out, seeded.

    Raises:
        ConfigError: fraction outside (0, 1), or fewer than two images to split.
    """
    if not 0 < fraction < 1:
        raise ConfigError(f"holdout fraction must be in (0, 1), got {fraction}")
    ids = np.arange(n) if groups is None else np.asarray(groups)
    uniq = np.unique(ids)
    if uniq.size < 2:
        raise ConfigError(f"a holdout needs at least 2 training images, got {uniq.size}")
    rng = np.random.default_rng(seed)
    n_hold = min(uniq.size - 1, max(1, int(np.ceil(fraction * uniq.size))))
    held = rng.permutation(uniq)[:n_hold]
    mask = np.isin(ids, held)
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def labelled_patches(feats: np.ndarray, patch_labels: np.ndarray, ignore_index: int) -> tuple[np.ndarray, np.ndarray]:
    """Features ``[N, D]`` and int64 labels ``[N]`` of the patches whose label is not the ignore index."""
    flat = patch_labels.reshape(-1)
    keep = flat != ignore_index
    return feats.reshape(-1, feats.shape[-1])[keep], flat[keep].astype(np.int64)


def score_patch_labels(pred: np.ndarray, labels: np.ndarray, *, num_classes: int,
                       ignore_index: int) -> tuple[SegMetrics, np.ndarray]:
    """Patch predictions ``[m, h, w]`` upsampled (nearest) and scored on the pixel labels ``[m, H, W]``;
    also the pixel predictions of the first :data:`PREVIEW_IMAGES` images."""
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    preview = []
    for s in range(0, pred.shape[0], SCORE_BATCH):
        px = upsample_labels(pred[s : s + SCORE_BATCH], labels.shape[1:])
        conf += confusion_matrix(labels[s : s + SCORE_BATCH], px, num_classes=num_classes, ignore_index=ignore_index)
        preview.append(px[: max(0, PREVIEW_IMAGES - s)])
    return seg_metrics(conf), np.concatenate(preview)


def score_patch_scores(scores: Tensor, labels: np.ndarray, *, num_classes: int,
                       ignore_index: int) -> tuple[SegMetrics, np.ndarray]:
    """Class scores ``[m, C, h, w]`` upsampled bilinearly, argmax per pixel, scored on ``[m, H, W]`` labels."""
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    preview = []
    for s in range(0, scores.shape[0], SCORE_BATCH):
        px = upsample_logits(scores[s : s + SCORE_BATCH], labels.shape[1:]).argmax(1).cpu().numpy()
        conf += confusion_matrix(labels[s : s + SCORE_BATCH], px, num_classes=num_classes, ignore_index=ignore_index)
        preview.append(px[: max(0, PREVIEW_IMAGES - s)])
    return seg_metrics(conf), np.concatenate(preview)


def as_tensor(x: np.ndarray, dtype: torch.dtype) -> Tensor:
    """A numpy array as a CPU tensor of ``dtype`` (no copy when it already is one)."""
    return torch.from_numpy(np.ascontiguousarray(x)).to(dtype)
