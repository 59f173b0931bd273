"""Pixel masks to patch labels (mode, ignore left out, ties low) and patch predictions back to pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from epcache.errors import ConfigError, ShapeMismatchError
from epcache.probe.dense.patch_labels import patch_grid, patch_majority, upsample_labels, upsample_logits

IGN = 255


def _mode_reference(masks: np.ndarray, patch: int, classes: int) -> np.ndarray:
    n, H, W = masks.shape
    out = np.full((n, H // patch, W // patch), IGN, dtype=np.int64)
    for i in range(n):
        for r in range(H // patch):
            for c in range(W // patch):
                cell = masks[i, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch].ravel()
                cell = cell[cell != IGN]
                if cell.size:
                    counts = np.bincount(cell, minlength=classes)
                    out[i, r, c] = int(np.flatnonzero(counts == counts.max())[0])
    return out


def test_hand_example_mode_ignore_and_ties() -> None:
    m = np.array([[[1, 1, 0, 2],
                   [1, IGN, 2, 0],
                   [IGN, IGN, 3, 3],
                   [IGN, IGN, 1, 1]]], dtype=np.uint8)
    got = patch_majority(m, 2, num_classes=4, ignore_index=IGN)
    # top-left: 1 x3 (ignore left out); top-right: 0 x2 vs 2 x2 -> tie to the lowest class 0;
    # bottom-left: only ignore -> ignore; bottom-right: 3 x2 vs 1 x2 -> 1
    assert got.tolist() == [[[1, 0], [IGN, 1]]]
    assert got.dtype == np.int64


def test_matches_a_loop_reference_on_random_masks() -> None:
    rng = np.random.default_rng(0)
    m = rng.integers(0, 5, size=(3, 12, 8)).astype(np.uint16)
    m[rng.random(m.shape) < 0.3] = IGN
    np.testing.assert_array_equal(patch_majority(m, 4, num_classes=5, ignore_index=IGN), _mode_reference(m, 4, 5))


def test_bad_labels_and_shapes_are_user_errors() -> None:
    with pytest.raises(ConfigError, match=r"\[0, 3\)"):
        patch_majority(np.full((1, 4, 4), 7, dtype=np.uint8), 2, num_classes=3, ignore_index=IGN)
    with pytest.raises(ShapeMismatchError, match="patches"):
        patch_majority(np.zeros((1, 5, 4), dtype=np.uint8), 2, num_classes=3, ignore_index=IGN)
    with pytest.raises(ShapeMismatchError, match="token grid"):
        patch_grid((32, 30), (4, 4))
    assert patch_grid((32, 32), (4, 4)) == 8


def test_nearest_upsampling_repeats_each_patch() -> None:
    lab = np.array([[[0, 1], [2, 3]]])
    up = upsample_labels(lab, (4, 6))
    assert up.tolist() == [[[0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1], [2, 2, 2, 3, 3, 3], [2, 2, 2, 3, 3, 3]]]
    np.testing.assert_array_equal(up, torch.nn.functional.interpolate(
        torch.from_numpy(lab)[:, None].float(), size=(4, 6), mode="nearest")[:, 0].long().numpy())


def test_logits_bilinear_without_corner_alignment() -> None:
    x = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]], dtype=torch.float64)
    up = upsample_logits(x, (4, 4))
    # align_corners=False: pixel centres at (i + 0.5) / 2 - 0.5 in patch units, clamped at the border
    np.testing.assert_allclose(up[0, 0, 0].numpy(), [0.0, 0.25, 0.75, 1.0])
    np.testing.assert_allclose(up[0, 0, :, 0].numpy(), [0.0, 0.5, 1.5, 2.0])
