"""Host batches to the device one batch ahead: pinned memory, a copy stream, non-blocking copies.

The reader thread (``stream.prefetch``) pins each host batch; :class:`DeviceCopier` issues its
host-to-device copy on a separate CUDA stream as soon as it arrives, and :func:`lookahead` makes
that happen for batch n+1 before batch n is handed to the trainer. So the copy of the next batch
runs while the current one trains, instead of queueing behind its kernels on the compute stream.
The compute stream waits on the copy's event before using a batch, and the batch's memory is
recorded on the compute stream so the caching allocator does not reuse it while kernels still
read it. On the CPU the same code path runs with nothing to overlap: pinning and the stream are
skipped, and the copy is the (no-op) dtype conversion.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
from torch import Tensor

__all__ = ["DeviceCopier", "lookahead"]

T = TypeVar("T")
U = TypeVar("U")


def lookahead(items: Iterator[T], start: Callable[[T], U]) -> Iterator[U]:
    """``start(item)`` for every item, called for item n+1 before the result of item n is yielded."""
    pending: list[U] = []
    for item in items:
        pending.append(start(item))
        if len(pending) == 2:
            yield pending.pop(0)
    yield from pending


class DeviceCopier:
    """Starts and finishes the copy of one ``(tokens, labels)`` host batch to ``device``.

    Args:
        device: where batches go.
        dtype: compute dtype the tokens become on the device (after the copy: the store dtype
            travels, which halves host-to-device traffic for fp16 stores).
    """

    def __init__(self, device: torch.device, dtype: torch.dtype) -> None:
        self.device = device
        self.dtype = dtype
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def start(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, torch.cuda.Event | None]:
        """Issue the copy (on the copy stream on CUDA); returns the device tensors and the copy's event."""
        tx, ty = batch
        if self.stream is None:
            return tx.to(self.device), ty.to(self.device), None
        with torch.cuda.stream(self.stream):
            x = tx.to(self.device, non_blocking=True)
            y = ty.to(self.device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.stream)
        return x, y, done

    def finish(self, started: tuple[Tensor, Tensor, torch.cuda.Event | None]) -> tuple[Tensor, Tensor]:
        """Make the compute stream wait for the copy; the tokens in the compute dtype."""
        x, y, done = started
        if done is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(done)
            x.record_stream(compute)
            y.record_stream(compute)
        return x.to(self.dtype), y
