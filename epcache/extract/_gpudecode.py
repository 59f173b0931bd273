"""``--decode gpu``: JPEGs decoded by nvjpeg on the CUDA device, resized and cropped there.

At GPU speed the CPU decode is the bottleneck of extraction: workers then only read bytes, and
the main process decodes a whole batch with one ``torchvision.io.decode_jpeg(..., device=)``
call. The resize and centre crop are timm's own eval transform steps (torchvision ``Resize`` and
``CenterCrop``), applied to the uint8 tensor instead of the PIL image: the output size is
computed by the same code, the pixels differ slightly (nvjpeg's IDCT and upsampling vs
libjpeg-turbo's, torch's antialiased bicubic vs PIL's). The difference is bounded by
``TOLERANCE`` (tested). Images that are not JPEG, or that nvjpeg rejects (CMYK, progressive
corner cases), are decoded by PIL, in the workers or here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from epcache.extract._loader import Batch, decode_image
from epcache.extract._pixels import PilSteps, to_uint8_chw

if TYPE_CHECKING:
    import torch

__all__ = ["TOLERANCE", "GpuDecoder", "cpu_reference", "gpu_decode_unavailable", "tensor_steps"]

# uint8 levels, GPU pixels vs the CPU path's: mean absolute difference, and the 99.9th percentile
TOLERANCE = {"mean_abs": 2.0, "p999_abs": 16}  # measured: nvjpeg on an H100 1.12 mean; CPU decode_jpeg 0.16 mean, 1 max
_SUPPORTED = ("Resize", "CenterCrop")


def gpu_decode_unavailable(device: str, steps: PilSteps) -> str | None:
    """Why ``--decode gpu`` cannot run here (then extraction decodes on the CPU), or None."""
    if not device.startswith("cuda"):
        return f"it needs a CUDA device and the device is {device!r} (pass --device cuda)"
    import torch

    if not torch.cuda.is_available():
        return "torch sees no CUDA device"
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except ImportError:
        return "torchvision is not installed"
    odd = [type(t).__name__ for t in steps.steps if type(t).__name__ not in _SUPPORTED]
    if odd:
        return f"this model's eval transform has steps {odd} beyond Resize and CenterCrop"
    return None


def tensor_steps(steps: PilSteps, img: torch.Tensor) -> torch.Tensor:
    """timm's Resize + CenterCrop on a (3, h, w) uint8 tensor (torchvision's tensor kernels)."""
    for t in steps.steps:
        img = t(img)
    return img


@dataclass
class GpuDecoder:
    """Fills the JPEG slots of a batch (left as zeros by the workers) with decoded, cropped pixels."""

    steps: PilSteps
    device: str

    def fill(self, x: torch.Tensor, batch: Batch) -> list[str]:
        """Decode ``batch.jpegs`` into ``x`` (B, 1, 3, H, W) uint8 on the device; returns per-sample errors."""
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        errors = list(batch.errors)
        slots = [i for i, j in enumerate(batch.jpegs) if j is not None]
        if not slots:
            return errors
        data = [torch.frombuffer(bytearray(batch.jpegs[i]), dtype=torch.uint8) for i in slots]  # type: ignore[arg-type]
        with warnings.catch_warnings():  # torchvision 0.29 points to torchcodec; decode_jpeg still works
            warnings.filterwarnings("ignore", ".*decoding and encoding capabilities", DeprecationWarning)
            try:
                decoded: list[Any] = list(decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device))
            except RuntimeError:  # one bad JPEG fails the whole batch: decode one by one
                decoded = [self._one(d, decode_jpeg, ImageReadMode.RGB) for d in data]
        for i, img in zip(slots, decoded, strict=True):
            if img is None:  # nvjpeg refused it: PIL on the CPU decides whether it is an image at all
                try:
                    img = to_uint8_chw(decode_image(bytes(batch.jpegs[i] or b""))).to(self.device)
                except (OSError, ValueError, SyntaxError) as e:
                    errors[i] = f"{type(e).__name__}: {e}"
                    continue
            x[i, 0] = tensor_steps(self.steps, img)
        return errors

    def _one(self, data: torch.Tensor, decode_jpeg: Any, mode: Any) -> torch.Tensor | None:
        try:
            return decode_jpeg(data, mode=mode, device=self.device)  # type: ignore[no-any-return]
        except RuntimeError:
            return None


def cpu_reference(steps: PilSteps, data: bytes) -> torch.Tensor:
    """The CPU path's pixels for ``data`` (PIL decode, PIL resize + crop): what GPU decoding approximates."""
    return to_uint8_chw(steps(decode_image(data)))
