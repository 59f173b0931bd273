"""Nearest class mean, SimpleShot's CL2N (Wang et al. 2019): centre, L2-normalise, nearest centroid.

The train mean is subtracted from every vector, which is then scaled to unit length; a class's
centroid is the mean of its normalised train vectors, and a query goes to the closest centroid
in Euclidean distance. The score −‖ẑ − c_k‖² = 2ẑ·c_k − ‖c_k‖² − 1 is linear in ẑ, so the
saved state is the centre plus a (C, D) weight and a (C,) bias on ẑ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["NcmModel", "fit_ncm"]


@dataclass(frozen=True)
class NcmModel:
    """A fitted nearest-class-mean classifier."""

    centre: Tensor  # (D,) train mean subtracted before normalising
    centroids: Tensor  # (C, D) class means of the normalised train vectors (zero for absent classes)
    present: Tensor  # (C,) bool: classes with at least one train vector

    def scores(self, x: Tensor) -> Tensor:
        """``(n, C)``: −squared distance (+ const) of the normalised queries to each centroid."""
        z = torch.nn.functional.normalize(x - self.centre, dim=1)
        s = 2 * z @ self.centroids.T - (self.centroids * self.centroids).sum(1)
        return s.masked_fill(~self.present, float("-inf"))


def fit_ncm(x: Tensor, y: Tensor, *, num_classes: int) -> NcmModel:
    """Centroids of the centred, L2-normalised train vectors ``x`` (n, D) with labels ``y``."""
    centre = x.mean(0)
    z = torch.nn.functional.normalize(x - centre, dim=1)
    sums = torch.zeros(num_classes, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, y, z)
    counts = torch.bincount(y, minlength=num_classes).to(x.dtype)
    return NcmModel(centre, sums / counts.clamp_min(1)[:, None], counts > 0)
