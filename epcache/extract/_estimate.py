"""A rough time estimate for `extract --dry-run`: one small batch through the planned forward, timed.

Bytes are exact from shapes alone, but time depends on the machine, so the only honest figure is
a measurement: the planned model (random weights: the same architecture costs the same) runs one
batch of random images on the chosen device with the chosen autocast, after a one-image warm-up
that pays the first call's set-up. The per-image time times the planned images is the forward
time; decoding and writing are not in it (they overlap the forward in the real run), and the
text says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from epcache.extract._backbone import _create
from epcache.extract._blocks import _autocast
from epcache.extract._forward import TokenExtractor
from epcache.extract._pooled_output import PooledTokenExtractor
from epcache.extract._prepare import Prepared

__all__ = ["ForwardEstimate", "estimate_forward", "format_duration"]

_MAX_BATCH = 8  # small: a dry run must stay quick even for a ViT-L on a CPU


@dataclass(frozen=True)
class ForwardEstimate:
    """The measured batch and what it implies for the whole plan."""

    device: str
    batch: int  # images in the timed forward
    seconds_per_image: float
    images: int  # images the plan forwards (samples x views, every split)

    @property
    def total_seconds(self) -> float:
        return self.seconds_per_image * self.images

    def text(self) -> str:
        """``~12 min on cpu (estimate: measured 1 batch of 8 images; forward only, decoding not included)``."""
        return (f"~{format_duration(self.total_seconds)} on {self.device} (estimate: measured 1 batch of "
                f"{self.batch} images; forward only, decoding not included)")


def estimate_forward(prep: Prepared) -> ForwardEstimate | str:
    """Time one small batch of the planned forward; a string says why nothing could be measured."""
    import torch

    cfg = prep.config
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        return f"not measured: torch sees no CUDA device for --device {cfg.device}"
    images = sum(s.num_samples * s.views for s in prep.plan.splits)
    batch = max(1, min(cfg.batch_size, _MAX_BATCH, images))
    with torch.random.fork_rng(devices=[]):  # the user's RNG stream is not advanced by a dry run
        torch.manual_seed(0)
        model = _create(prep.source.timm_name, model_kwargs=cfg.model_kwargs, img_size=cfg.effective_img_size)
        x = torch.randn(batch, *prep.plan.input_size)
    model.eval().requires_grad_(False)
    try:
        model.to(cfg.device)
        extractor: Any = (PooledTokenExtractor if prep.pooled_dim else TokenExtractor)(
            model, prep.geometry, final_norm=cfg.final_norm
        )
        x = x.to(cfg.device)
        with torch.inference_mode(), _autocast(cfg):
            extractor(x[:1])  # warm-up: allocator, kernels, lazy initialisation
            _sync(cfg.device)
            t0 = time.perf_counter()
            extractor(x)
            _sync(cfg.device)
            seconds = time.perf_counter() - t0
    except (RuntimeError, MemoryError) as e:  # out of memory, an unsupported autocast dtype ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return f"not measured: the forward of {batch} images failed on {cfg.device} ({first[:120]})"
    return ForwardEstimate(device=cfg.device, batch=batch, seconds_per_image=seconds / batch, images=images)


def format_duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3.4 h``: a rough figure, so rough units."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)
