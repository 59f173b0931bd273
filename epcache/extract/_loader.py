"""Decoding in DataLoader workers: one item = one sample's V views as uint8, or a decode failure.

A worker never raises for a bad image: it returns a flag and the reason, and the main process
raises ``BadImageError`` naming the file. (An exception raised inside a worker reaches the
user re-wrapped with the worker's traceback text in the message.)

Images come from files (a list of paths: ImageFolder, CSV) or from a ``SampleReader`` that
returns each sample's encoded bytes (WebDataset shards, Hugging Face tables). Workers send
uint8 pixels (``_pixels``); with ``raw_jpeg`` they send a JPEG's bytes undecoded, for the GPU.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from PIL import Image

from epcache.extract._pixels import pil_steps, to_uint8_chw
from epcache.extract._transforms import ViewAugment, view_rng

if TYPE_CHECKING:
    import torch
    from PIL import Image

__all__ = [
    "Batch",
    "SampleReader",
    "ViewDataset",
    "decode_image",
    "find_unreadable",
    "is_jpeg",
    "make_loader",
    "sixteen_bit_to_8",
]

_BAD = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)  # PIL's ways to fail, and the readers'


class SampleReader(Protocol):
    """Encoded bytes of sample ``index`` of one split (picklable: it travels to the workers)."""

    def __len__(self) -> int: ...

    def read(self, index: int) -> bytes:
        """The image's file bytes. Raises OSError or ValueError when the sample cannot be read."""
        ...

    def where(self, index: int) -> str:
        """Where the sample lives, for messages (shard and member, table file and row)."""
        ...


def is_jpeg(data: bytes) -> bool:
    """JPEG's start-of-image marker: what GPU decoding can take."""
    return data[:3] == b"\xff\xd8\xff"


@dataclass(frozen=True)
class Batch:
    """A collated batch of samples in the order they were requested."""

    indices: list[int]  # dataset indices
    images: torch.Tensor  # (B, V, 3, H, W) uint8; zeros where decoding failed or a JPEG is left to the GPU
    errors: list[str]  # "" where decoding succeeded, else the reason
    jpegs: list[bytes | None] = field(default_factory=list)  # raw_jpeg: undecoded JPEG per sample, else None

    def pin_memory(self) -> Batch:
        """Called by the DataLoader's pinning thread (pin_memory=True) so host-to-GPU copies are async."""
        return Batch(self.indices, self.images.pin_memory(), self.errors, self.jpegs)


def decode_image(path: Path | bytes) -> Image.Image:
    """Open and fully decode an image as RGB (lazy PIL decoding would defer the failure).

    16-bit grayscale (PNG/TIFF, PIL modes ``I;16*`` and ``I``) is scaled to 8 bits,
    ``round(v * 255 / 65535)``: PIL's ``convert("RGB")`` clips it at 255 instead, which turned a
    typical 16-bit image 99.6% white. Float images (mode ``F``) have no agreed range and are refused.

    Raises:
        ValueError: a float or 32-bit integer image outside 0..65535 (reported as a bad image).
    """
    from PIL import Image

    with Image.open(io.BytesIO(path) if isinstance(path, bytes) else path) as im:
        im.load()
        if im.mode.startswith("I"):
            return _sixteen_bit_to_rgb(im)
        if im.mode == "F":
            raise ValueError("a 32-bit float image has no defined pixel range; convert it to 8-bit RGB first")
        return im.convert("RGB")


def sixteen_bit_to_8(values: np.ndarray) -> np.ndarray:
    """Scale 16-bit pixel values to 8 bits with rounding (0 -> 0, 65535 -> 255, 257 * k -> k)."""
    v = values.astype(np.uint32)
    return ((v * 255 + 32767) // 65535).astype(np.uint8)


def _sixteen_bit_to_rgb(im: Image.Image) -> Image.Image:
    from PIL import Image

    a = np.asarray(im)
    if a.dtype.kind == "f" or (a.size and (int(a.min()) < 0 or int(a.max()) > 65535)):
        raise ValueError(
            f"a {im.mode} image with values {int(a.min())}..{int(a.max())} is not 16-bit; convert it to 8-bit RGB first"
        )
    return Image.fromarray(sixteen_bit_to_8(a)).convert("RGB")


class ViewDataset:
    """Map-style dataset: dataset index -> (index, uint8 views (V, 3, H, W), error, raw JPEG or None)."""

    def __init__(
        self,
        paths: Sequence[Path] | SampleReader,
        *,
        split: str,
        eval_transform: Callable[[Image.Image], torch.Tensor],
        input_size: tuple[int, int, int],
        views: int,
        augment: ViewAugment | None,
        seed: int,
        raw_jpeg: bool = False,
    ) -> None:
        if views > 1 and augment is None:
            raise ValueError("views > 1 needs an augmentation recipe")
        self.paths = paths if hasattr(paths, "read") else list(paths)  # type: ignore[arg-type]
        self.split = split
        self.eval_transform = eval_transform
        self.pixels = pil_steps(eval_transform)  # resize + crop; ToTensor/Normalize run on the device
        self.input_size = input_size
        self.views = views
        self.augment = augment
        self.seed = seed
        self.raw_jpeg = raw_jpeg and views == 1  # augmented views are cropped from the PIL image

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, str, bytes | None]:
        import torch

        try:
            data = read_sample(self.paths, index)
            if self.raw_jpeg and is_jpeg(data):
                return index, torch.zeros((self.views, *self.input_size), dtype=torch.uint8), "", data
            img = decode_image(data)
            out = [to_uint8_chw(self.pixels(img))]
            for v in range(1, self.views):
                assert self.augment is not None
                out.append(self.augment(img, view_rng(self.seed, self.split, index, v)))
            return index, torch.stack(out), "", None
        except _BAD as e:
            reason = f"{type(e).__name__}: {e}"
            return index, torch.zeros((self.views, *self.input_size), dtype=torch.uint8), reason, None


def read_sample(paths: Sequence[Path] | SampleReader, index: int) -> bytes:
    """The encoded bytes of one sample, from its file or its reader."""
    if hasattr(paths, "read"):
        return paths.read(index)  # type: ignore[union-attr]
    with open(paths[index], "rb") as f:  # type: ignore[index]
        return f.read()


def make_loader(
    dataset: ViewDataset, batches: Sequence[Sequence[int]], *, workers: int, pin_memory: bool
) -> torch.utils.data.DataLoader[Batch]:
    """A loader yielding ``Batch`` objects for exactly ``batches`` (lists of dataset indices), in order."""
    import torch.utils.data

    return torch.utils.data.DataLoader(
        dataset,  # type: ignore[arg-type]
        batch_sampler=[list(b) for b in batches],
        num_workers=workers,
        pin_memory=pin_memory,
        collate_fn=_collate,
        prefetch_factor=4 if workers > 0 else None,
    )


def find_unreadable(
    paths: Sequence[Path] | SampleReader, *, workers: int, progress: bool = False, desc: str = "check"
) -> dict[int, str]:
    """Decode every image once (in workers) and return ``{index: reason}`` for those that fail.

    Used by ``on_bad_image="skip"`` before the store exists, so that unreadable images are left
    out of the split instead of being stored as rows of zeros that a probe would train on.
    """
    import torch.utils.data
    from tqdm.auto import tqdm

    loader = torch.utils.data.DataLoader(
        _DecodeCheck(paths),  # type: ignore[arg-type]
        batch_size=64,
        num_workers=workers,
        collate_fn=list,
    )
    bad: dict[int, str] = {}
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress, dynamic_ncols=True) as bar:
        for items in loader:
            bad.update((i, reason) for i, reason in items if reason)
            bar.update(len(items))
    return bad


def _collate(items: list[tuple[int, torch.Tensor, str, bytes | None]]) -> Batch:
    import torch

    return Batch(
        indices=[i for i, _, _, _ in items],
        images=torch.stack([x for _, x, _, _ in items]),
        errors=[e for _, _, e, _ in items],
        jpegs=[j for _, _, _, j in items],
    )


class _DecodeCheck:
    """Dataset that only decodes: index -> (index, "" or the reason it failed)."""

    def __init__(self, paths: Sequence[Path] | SampleReader) -> None:
        self.paths = paths if hasattr(paths, "read") else list(paths)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, str]:
        try:
            decode_image(read_sample(self.paths, index))
        except _BAD as e:
            return index, f"{type(e).__name__}: {e}"
        return index, ""
