"""Pixels to model input: timm's eval transform (view 0) and seeded augmented views (1..K).

The eval transform is timm's own for the model (``resolve_model_data_config`` then
``create_transform``), resolved once and recorded in the store so the probe stage never
recomputes it. Augmented views follow the EP recipe (docs/EP_SPEC.md §4.2): RandomResizedCrop
(scale 0.08-1, ratio 3/4-4/3, bicubic) and a horizontal flip, then ToTensor + Normalize. Each
view draws from its own generator seeded by (seed, split, sample index, view index), so the
pixels of a view never depend on batch size, worker count, or which run produced them.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from epcache.extract._pixels import to_uint8_chw

if TYPE_CHECKING:
    import torch
    from PIL import Image
    from torch import nn

__all__ = [
    "CropFlip",
    "ViewAugment",
    "augment_geometry",
    "create_eval_transform",
    "crop_flip",
    "crop_params",
    "resolve_data_config",
    "view_rng",
]

CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
FLIP_P = 0.5


def resolve_data_config(model: nn.Module, *, img_size: int | None) -> dict[str, Any]:
    """timm's data config for ``model`` as JSON-able values, with ``img_size`` overriding.

    The override must be passed explicitly: a ViT built with ``img_size=32`` still reports its
    pretrained 224 in ``pretrained_cfg``.
    """
    import timm.data

    args = {"img_size": img_size} if img_size is not None else None
    cfg = timm.data.resolve_model_data_config(model, args=args)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}


def create_eval_transform(data_config: dict[str, Any]) -> Callable[[Image.Image], torch.Tensor]:
    """timm's deterministic eval transform (resize, center crop, to tensor, normalize)."""
    import timm.data

    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in data_config.items()}
    return timm.data.create_transform(**cfg, is_training=False)  # type: ignore[no-any-return]


def view_rng(seed: int, split: str, index: int, view: int) -> np.random.Generator:
    """The generator of one augmented view: a function of its identity only."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(split.encode()), index, view]))


def crop_params(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = CROP_SCALE,
    ratio: tuple[float, float] = CROP_RATIO,
) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a RandomResizedCrop, torchvision's algorithm on ``rng``.

    Ten tries at a random area and log-uniform aspect ratio, then a center-crop fallback, as
    ``torchvision.transforms.RandomResizedCrop.get_params``; only the random source differs.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@dataclass(frozen=True)
class CropFlip:
    """The geometry of one augmented view: a crop box of the source image and whether it is mirrored."""

    top: int
    left: int
    height: int
    width: int
    flip: bool


def augment_geometry(width: int, height: int, rng: np.random.Generator) -> CropFlip:
    """The crop box and flip of an augmented view, drawn from the view's generator in the recipe's order."""
    top, left, h, w = crop_params(width, height, rng)
    return CropFlip(top, left, h, w, bool(rng.random() < FLIP_P))


def crop_flip(img: Image.Image, geom: CropFlip, size: tuple[int, int], *, nearest: bool = False) -> Image.Image:
    """Cut ``geom``'s box, resize it to ``size`` (h, w) and mirror it: images bicubic, label masks nearest.

    The one place an augmented view's geometry is applied, so a view's pixels and its mask cannot disagree.
    """
    import torchvision.transforms.functional as F
    from torchvision.transforms import InterpolationMode

    mode = InterpolationMode.NEAREST if nearest else InterpolationMode.BICUBIC
    out = F.resized_crop(img, geom.top, geom.left, geom.height, geom.width, list(size), interpolation=mode,
                         antialias=True)
    return F.hflip(out) if geom.flip else out


@dataclass(frozen=True)
class ViewAugment:
    """The augmented-view recipe; call it with the view's generator for the view's uint8 pixels."""

    size: tuple[int, int]  # (h, w) model input
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        out = crop_flip(img, augment_geometry(img.width, img.height, rng), self.size)
        return to_uint8_chw(out)  # uint8: normalised on the device with mean/std (_pixels.Normalizer)

    def to_json(self) -> dict[str, Any]:
        """The recipe as recorded in ``StoreMeta.views["recipe"]``."""
        return {
            "crop": "RandomResizedCrop",
            "size": list(self.size),
            "scale": list(CROP_SCALE),
            "ratio": [CROP_RATIO[0], CROP_RATIO[1]],
            "interpolation": "bicubic",
            "crop_sampler": "torchvision get_params (10 tries, center fallback)",
            "hflip_p": FLIP_P,
            "mean": list(self.mean),
            "std": list(self.std),
            "rng": "numpy default_rng(SeedSequence([seed, crc32(split), dataset_index, view]))",
            "view0": "eval transform",
        }
