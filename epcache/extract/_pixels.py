"""Pixels as workers hand them over (uint8) and as the model sees them (normalised float32).

Workers run timm's eval transform only up to its last PIL step (resize, centre crop) and send
uint8 CHW tensors: a quarter of the bytes of float32 through the DataLoader's shared memory and
the host-to-device copy. The main process converts on the device with exactly the arithmetic of
``ToTensor`` + ``Normalize`` (``x.float().div(255)``, then ``sub(mean).div(std)``, float32,
element by element), so the tokens are bit-identical to normalising in the worker.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from PIL import Image

__all__ = ["Normalizer", "PilSteps", "default_workers", "pil_steps", "to_uint8_chw"]

MAX_DEFAULT_WORKERS = 4


def default_workers() -> int:
    """min(4, CPUs this process may run on): more workers than cores only adds contention."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_WORKERS, cpus))


def to_uint8_chw(img: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a (3, H, W) uint8 tensor (no scaling)."""
    import torch

    a = np.asarray(img.convert("RGB") if img.mode != "RGB" else img, dtype=np.uint8)
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


def pil_steps(eval_transform: Any) -> PilSteps:
    """The PIL part of timm's eval transform: every step before ``ToTensor``/``MaybeToTensor``.

    Raises:
        ValueError: the transform does not end in ToTensor + Normalize (a timm change epcache does
            not know; tokens would otherwise silently change).
    """
    steps = list(getattr(eval_transform, "transforms", [eval_transform]))
    names = [type(t).__name__ for t in steps]
    if len(names) < 2 or names[-2] not in ("ToTensor", "MaybeToTensor") or names[-1] != "Normalize":
        raise ValueError(f"timm's eval transform {names} does not end in ToTensor, Normalize; epcache cannot split it")
    return PilSteps(tuple(steps[:-2]))


@dataclass(frozen=True)
class PilSteps:
    """Resize and crop on a PIL image (picklable, so DataLoader workers can run it)."""

    steps: tuple[Any, ...]

    def __call__(self, img: Image.Image) -> Image.Image:
        for t in self.steps:
            img = t(img)
        return img


@dataclass(frozen=True)
class Normalizer:
    """uint8 (…, 3, H, W) on any device -> float32 normalised, as ToTensor + Normalize compute it."""

    mean: Sequence[float]
    std: Sequence[float]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch

        mean = torch.as_tensor(self.mean, dtype=torch.float32, device=x.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=torch.float32, device=x.device).view(-1, 1, 1)
        return x.to(torch.float32).div(255).sub_(mean).div_(std)
