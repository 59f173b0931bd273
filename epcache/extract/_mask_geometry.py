"""A view's per-pixel labels: the mask cut by exactly the geometric transform of the view's pixels.

View 0 is timm's eval resize and centre crop (the PIL steps of ``_pixels.pil_steps``), augmented views
are the crop box and flip of ``_transforms.crop_flip`` drawn from the view's own generator; a mask
goes through the same steps with nearest-neighbour resampling, so a class index is never blended
with its neighbour. ``warp_mask`` is the one function that does this, used by extraction and by
anyone who checks a stored mask against its source.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from epcache.extract._loader import read_sample
from epcache.extract._pixels import PilSteps
from epcache.extract._transforms import CropFlip, augment_geometry, crop_flip, view_rng

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["MaskBlocks", "ViewGeometry", "load_mask", "nearest_steps", "view_geometry", "warp_mask"]

ViewGeometry = PilSteps | CropFlip  # view 0: the eval steps; views 1..K: a crop box and flip


def nearest_steps(steps: PilSteps) -> PilSteps:
    """The eval transform's PIL steps with every resampling switched to nearest (boxes and sizes unchanged)."""
    from torchvision.transforms import InterpolationMode

    out = []
    for t in steps.steps:
        if hasattr(t, "interpolation"):
            t = copy.copy(t)
            t.interpolation = InterpolationMode.NEAREST
        out.append(t)
    return PilSteps(tuple(out))


def view_geometry(
    eval_steps: PilSteps, width: int, height: int, *, seed: int, split: str, index: int, view: int
) -> ViewGeometry:
    """The geometry of view ``view`` of dataset sample ``index`` (a ``width`` x ``height`` source image)."""
    if view == 0:
        return eval_steps
    return augment_geometry(width, height, view_rng(seed, split, index, view))


def warp_mask(mask: Image.Image, geometry: ViewGeometry, size: tuple[int, int]) -> np.ndarray:
    """``mask`` (mode L or I) moved through ``geometry`` with nearest resampling, as an (H, W) int array.

    Raises:
        ValueError: the result is not ``size`` (h, w): the eval steps do not end at the model input.
    """
    if isinstance(geometry, CropFlip):
        out = crop_flip(mask, geometry, size, nearest=True)
    else:
        out = nearest_steps(geometry)(mask)
    a = np.asarray(out)
    if a.shape != tuple(size):
        raise ValueError(f"a warped mask is {a.shape}, the model input is {tuple(size)}")
    return a


def load_mask(data: bytes | Path) -> Image.Image:
    """A mask file as a PIL image of its class indices: mode L (8-bit) or I (16-bit); palette indices kept.

    Raises:
        ValueError: not single-channel (RGB masks hold colours, not class indices).
    """
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as im:
        im.load()
        if im.mode in ("L", "P"):
            return Image.fromarray(np.asarray(im).astype(np.uint8))
        if im.mode.startswith("I"):
            return Image.fromarray(np.asarray(im).astype(np.int32))
        raise ValueError(f"mode {im.mode} is not a single-channel mask of class indices (save it as 8- or 16-bit L)")


@dataclass(frozen=True)
class MaskBlocks:
    """The masks of a split's write-blocks, computed on the background writer's thread."""

    files: Sequence[Path] | Any  # mask file of each dataset sample, or a reader of their bytes (hf: datasets)
    split: str
    eval_steps: PilSteps
    size: tuple[int, int]
    views: int
    seed: int
    dtype: str

    def rows(self, indices: Sequence[int]) -> np.ndarray:
        """``[len(indices), V, H, W]`` masks of the given dataset samples, in that order."""
        out = np.empty((len(indices), self.views, *self.size), np.dtype(self.dtype))
        for r, index in enumerate(indices):
            mask = load_mask(read_sample(self.files, int(index)))
            for v in range(self.views):
                geom = view_geometry(self.eval_steps, mask.width, mask.height, seed=self.seed, split=self.split,
                                     index=int(index), view=v)
                out[r, v] = warp_mask(mask, geom, self.size)
        return out
