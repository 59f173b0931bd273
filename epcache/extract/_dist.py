"""Distributed extraction under torchrun: which rank writes which blocks, and how the ranks agree.

``torchrun --nproc-per-node N -m epcache extract ...`` starts N copies of the same command; they
find each other through torchrun's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...,
the ``env://`` init method). Only small Python objects travel between ranks (what to extract,
whether setting up the store failed, per-rank statistics), so the ``gloo`` backend on CPU is
enough even when the forward runs on GPUs, and a job that already initialised NCCL gets a gloo
group of its own.

Ranks never share a write unit: a block is a whole zarr shard (or chunk) plus its record file,
and blocks are dealt round-robin over the ranks from one list that rank 0 computes, so every
block is written by exactly one rank, and which one never changes the bytes.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["DistContext", "assign_blocks", "distributed_context", "exit_on_sigterm", "torchrun_world_size"]

T = TypeVar("T")

# Collectives also wait for rank 0 to create the store (which, with --on-bad-image skip, decodes
# every image once) and for the slowest rank's share of blocks; a hung rank is bounded by this.
COLLECTIVE_TIMEOUT = datetime.timedelta(hours=6)


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job; a single process is rank 0 of 1 and every method is local."""

    rank: int
    world_size: int
    group: Any = None  # torch.distributed process group of the collectives (None: the default group)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: takes the writer lock, creates the store and writes its metadata."""
        return self.rank == 0

    def share(self, obj: T | None) -> T:
        """Rank 0's ``obj`` on every rank (other ranks pass None). Also a barrier."""
        if not self.distributed:
            return obj  # type: ignore[return-value]
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]  # type: ignore[return-value]

    def gather(self, obj: T) -> list[T]:
        """Every rank's ``obj``, in rank order, on every rank. Also a barrier."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def assign(self, blocks: Sequence[int]) -> list[int]:
        """This rank's share of ``blocks`` (see ``assign_blocks``)."""
        return assign_blocks(blocks, rank=self.rank, world_size=self.world_size)


def assign_blocks(blocks: Sequence[int], *, rank: int, world_size: int) -> list[int]:
    """Round-robin: rank r takes ``blocks[r], blocks[r + W], ...`` of the (sorted) missing blocks.

    Dealing the *missing* blocks, not all blocks, keeps a resumed job balanced: after a crash the
    holes are wherever the dead ranks were, and every rank gets an equal share of them.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size}")
    return list(blocks[rank::world_size])


def torchrun_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it; 1 outside torchrun."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


@contextmanager
def distributed_context() -> Iterator[DistContext]:
    """Join the torchrun job if there is one (``WORLD_SIZE > 1``), else yield a single-process context.

    Initialises ``torch.distributed`` with gloo from torchrun's environment and tears it down
    again; if the caller already initialised it (any backend), a separate gloo group is used and
    the caller's group is left alone.
    """
    world = torchrun_world_size()
    if world == 1:
        yield DistContext(rank=0, world_size=1)
        return
    import torch.distributed as dist

    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(backend="gloo", init_method="env://", timeout=COLLECTIVE_TIMEOUT)
        group = None
    else:
        group = dist.new_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT)
    try:
        yield DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), group=group)
    finally:
        if owned and dist.is_initialized():
            dist.destroy_process_group()


@contextmanager
def exit_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into SystemExit while extracting, so cleanup runs when a process is stopped.

    torchrun sends SIGTERM to the surviving ranks when one dies, and schedulers (slurm, k8s) send
    it before a preemption; by default it ends a process on the spot, leaving the writer lock
    behind (and queued blocks unwritten). Raising SystemExit instead runs the ``finally`` blocks:
    blocks already queued are written and recorded, and the lock is released, so the next run
    resumes without --break-lock. Only replaces the default handler, only in the main thread.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) not in (
        signal.SIG_DFL,
        None,
    ):
        yield
        return

    def _exit(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
