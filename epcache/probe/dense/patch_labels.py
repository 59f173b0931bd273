"""Between the pixel label grid and the patch grid: majority labels down, predictions and logits up.

A store holds one token per patch (the h x w grid after the prefix tokens, row-major; cache_layout.md)
while a segmentation mask has one label per pixel (H = h * patch, W = w * patch). The per-patch heads
(dense-knn, dense-logreg, Hummingbird's memory) need one label per patch, and every head is scored
on the pixels, so both directions live here:

- down: the label of a patch is the mode of its patch x patch pixels, the ignore index left out; a
  patch with no labelled pixel is ignore itself; a tie goes to the lowest class index (``argmax``
  of the counts), so the result does not depend on pixel order.
- up, labels: nearest neighbour (each pixel takes the label of the patch it lies in when H = h * patch).
- up, logits or class scores: bilinear with ``align_corners=False`` (mmseg's ``resize`` and the
  DINOv3 linear segmentation head), then the argmax on the pixel grid.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from epcache.errors import ConfigError, ShapeMismatchError

__all__ = ["patch_grid", "patch_majority", "upsample_labels", "upsample_logits"]


def patch_grid(label_shape: tuple[int, int], grid: tuple[int, int]) -> int:
    """The patch size that maps a ``(h, w)`` token grid onto an ``(H, W)`` label grid.

    Raises:
        ShapeMismatchError: the label grid is not a whole multiple of the token grid, or the two
            axes disagree on the patch size (masks written at another resolution than the tokens).
    """
    (H, W), (h, w) = label_shape, grid
    if h < 1 or w < 1 or H % h or W % w or H // h != W // w:
        raise ShapeMismatchError(
            f"label grid {H}x{W} is not the {h}x{w} token grid times one patch size; "
            "write the masks at the resolution the tokens were extracted at")
    return H // h


def patch_majority(masks: np.ndarray, patch: int, *, num_classes: int, ignore_index: int) -> np.ndarray:
    """``[n, H, W]`` pixel labels -> ``[n, H/patch, W/patch]`` int64 patch labels (mode, ignore left out).

    Raises:
        ShapeMismatchError: ``H`` or ``W`` not a multiple of ``patch``.
        ConfigError: a label outside ``[0, num_classes)`` that is not the ignore index.
    """
    n, H, W = masks.shape
    if patch < 1 or H % patch or W % patch:
        raise ShapeMismatchError(f"mask {H}x{W} is not a whole number of {patch}x{patch} patches")
    h, w = H // patch, W // patch
    lab = masks.astype(np.int64).reshape(n, h, patch, w, patch).transpose(0, 1, 3, 2, 4).reshape(-1, patch * patch)
    valid = lab != ignore_index
    bad = valid & ((lab < 0) | (lab >= num_classes))
    if bad.any():
        raise ConfigError(f"mask labels must be in [0, {num_classes}) or the ignore index {ignore_index}, "
                         f"found {int(lab[bad][0])}")
    cell = np.broadcast_to(np.arange(lab.shape[0])[:, None], lab.shape)
    counts = np.bincount(cell[valid] * num_classes + lab[valid], minlength=lab.shape[0] * num_classes)
    counts = counts.reshape(-1, num_classes)
    out = counts.argmax(1)  # first maximum: ties to the lowest class
    out[counts.sum(1) == 0] = ignore_index
    return out.reshape(n, h, w)


def upsample_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``[n, h, w]`` patch labels -> ``[n, H, W]`` by nearest neighbour (``torch``'s ``nearest`` rule:
    pixel ``i`` reads patch ``floor(i * h / H)``), the label's dtype kept."""
    _, h, w = labels.shape
    H, W = size
    rows = (np.arange(H) * h) // H
    cols = (np.arange(W) * w) // W
    return labels[:, rows[:, None], cols[None, :]]


def upsample_logits(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """``[n, C, h, w]`` scores -> ``[n, C, H, W]``, bilinear, ``align_corners=False``.

    Scores are resized, never features: the 1x1 head is linear, so this is the cheap order, and it is
    the one the reference linear segmentation evaluations use.
    """
    return torch.nn.functional.interpolate(logits, size=size, mode="bilinear", align_corners=False)
