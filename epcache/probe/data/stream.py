"""Batches of cached tokens for the fused trainer: read once per epoch, shuffled, prefetched.

Training batches come from whole chunks read in a seeded random order, mixed in a shuffle
buffer of a few chunks (the store already holds samples in a random permutation, so chunk-level
shuffling plus a buffer gives class-mixed batches without element-wise reads). A reader thread
runs ahead of the trainer through a bounded queue; on CUDA, batches are pinned there and copied
with ``non_blocking`` on a copy stream, one batch ahead of the trainer (``device_copy``). Tokens
travel in the store's dtype (fp16/bf16) and become float32 on the device, which halves
host-to-device traffic.

Every random choice (chunk order, buffer permutation, which augmented view a sample uses)
is drawn from ``(data_seed, epoch)`` only, so the batch sequence does not depend on which
configs are being trained: a config alone and inside a sweep sees the same batches, and a run
resumed at an epoch boundary continues with exactly the batches it would have seen.
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from epcache.probe.data.device_copy import DeviceCopier, lookahead
from epcache.probe.data.reads import InputRead
from epcache.store import FeatureStore
from epcache.store.layout.tokens import to_torch

__all__ = ["Batch", "BatchStream", "InputRead", "MemorySource", "StoreSource", "prefetch", "rows_in_order"]

_DONE = object()
Request = tuple[int, np.ndarray, np.ndarray | None]  # (chunk, local rows, view per row or None)


@dataclass(frozen=True)
class Batch:
    """One batch on the device: packed tokens in the compute dtype and int64 labels."""

    x: Tensor  # (B, T', D): see InputRead.derive
    y: Tensor  # (B,)


class StoreSource:
    """Reads packed rows of one split and layer from the store, a whole chunk at a time."""

    def __init__(self, store: FeatureStore, split: str, layer: int, plan: InputRead, *, decode_to: Any = None) -> None:
        self.store, self.split, self.layer, self.plan = store, split, layer, plan
        self.chunk_samples = store.split(split).chunk_samples
        self.decode_to = decode_to  # quantised stores: the dtype chunks decode into (None: the store's dtype)

    def rows(self, chunk: int, local: np.ndarray, views: np.ndarray | None) -> np.ndarray:
        """Packed ``[len(local), T', D]`` for rows ``local`` of ``chunk`` (view per row, or view 0)."""
        data = self.store.read_chunk(self.split, self.layer, chunk, decode_to=self.decode_to)  # [n, V, T, D]
        x = data[local, 0] if views is None else data[local, views]
        return self.plan.pack(x)

    def rows_in_order(self, requests: Sequence[Request]) -> Iterator[np.ndarray]:
        """:meth:`rows` of each ``(chunk, local, views)`` in turn, the chunks read ahead (``read_chunks``)."""
        reads = self.store.read_chunks(self.split, self.layer, [r[0] for r in requests], decode_to=self.decode_to)
        for (_, local, views), (_, data) in zip(requests, reads, strict=True):
            yield self.plan.pack(data[local, 0] if views is None else data[local, views])


class MemorySource:
    """Packed rows held in RAM (all views), served with the same interface as :class:`StoreSource`."""

    def __init__(self, rows: np.ndarray, data: np.ndarray, chunk_samples: int) -> None:
        self.row_index = np.asarray(rows, np.int64)  # sorted stored rows held
        self.data = data  # [len(rows), V, T', D] packed
        self.chunk_samples = chunk_samples

    @classmethod
    def load(
        cls,
        store: FeatureStore,
        split: str,
        layer: int,
        plan: InputRead,
        rows: np.ndarray,
        *,
        all_views: bool,
        dtype: torch.dtype | None = None,
    ) -> MemorySource:
        """Read ``rows`` once, chunk by chunk, keeping only what ``plan`` needs.

        With ``dtype`` (the compute dtype) the rows are converted once here, chunk by chunk, so
        later epochs serve batches that need no conversion at all.
        """
        cs = store.split(split).chunk_samples
        rows = np.asarray(rows, np.int64)
        out: np.ndarray | None = None
        parts = []
        at = 0
        by_chunk = list(_rows_by_chunk(rows, cs))
        decode = np.float32 if dtype == torch.float32 else None  # quantised: straight to the compute dtype
        reads = store.read_chunks(split, layer, [c for c, _ in by_chunk], decode_to=decode)  # read ahead: remote
        for (_, local), (_, chunk_data) in zip(by_chunk, reads, strict=True):
            data = chunk_data[local]  # [m, V, T, D]
            packed = plan.pack(data if all_views else data[:, :1])
            if dtype is None:
                parts.append(packed)
                continue
            if out is None:  # one buffer in the compute dtype, filled chunk by chunk: one conversion, no concat
                out = torch.empty((len(rows), *packed.shape[1:]), dtype=dtype).numpy()
            torch.from_numpy(out[at : at + len(local)]).copy_(to_torch(packed))
            at += len(local)
        if out is not None:
            data = out
        elif parts:
            data = np.concatenate(parts)
        else:
            data = np.zeros((0, 1, 0, store.meta.layer_shape(layer)[1]), np.float32)
        return cls(rows, np.ascontiguousarray(data), cs)

    def rows(self, chunk: int, local: np.ndarray, views: np.ndarray | None) -> np.ndarray:
        return self.gather(chunk * self.chunk_samples + local, views)

    def gather(self, rows: np.ndarray, views: np.ndarray | None) -> np.ndarray:
        """Packed ``[len(rows), T', D]`` for stored rows ``rows`` (each held), one copy."""
        pos = np.searchsorted(self.row_index, rows)
        return self.data[pos, 0] if views is None else self.data[pos, views]


Source = StoreSource | MemorySource


class BatchStream:
    """The batches of one split subset: shuffled training epochs and ordered evaluation passes.

    Args:
        source: where packed rows come from (the store, or RAM).
        rows: stored row indices to use (sorted).
        labels: labels of the whole split, stored order.
        batch_size: samples per batch.
        device: where batches go.
        dtype: compute dtype the tokens are converted to on the device.
        data_seed: seeds chunk order, shuffle buffer and view choice together with the epoch.
        views: views per sample in the split (V); training cycles through them.
        shuffle_chunks: chunks mixed in the shuffle buffer (0: enough for two batches, at least 4).
        prefetch: batches the reader thread may run ahead.
    """

    def __init__(
        self,
        source: Source,
        rows: np.ndarray,
        labels: np.ndarray,
        *,
        batch_size: int,
        device: torch.device,
        dtype: torch.dtype,
        data_seed: int,
        views: int = 1,
        shuffle_chunks: int = 0,
        prefetch: int = 4,
    ) -> None:
        self.source = source
        self.rows = np.asarray(rows, np.int64)
        self.labels = np.asarray(labels, np.int64)
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.data_seed = data_seed
        self.views = views
        cs = source.chunk_samples
        self.shuffle_chunks = shuffle_chunks or max(4, math.ceil(2 * batch_size / cs))
        self.prefetch = prefetch
        self.wait_seconds = 0.0  # time the consumer waited for the reader (queue empty), all passes
        self._by_chunk = list(_rows_by_chunk(self.rows, cs))
        n_split = len(self.labels)
        self._view_offset = np.random.default_rng([data_seed, 1]).integers(views, size=n_split) if views > 1 else None

    @property
    def num_samples(self) -> int:
        return len(self.rows)

    def steps_per_epoch(self) -> int:
        """Training steps per epoch (drop_last)."""
        return len(self.rows) // self.batch_size

    def train_epoch(self, epoch: int) -> Iterator[Batch]:
        """Shuffled full batches of epoch ``epoch`` (the last partial batch is dropped)."""
        return self._device_batches(lambda: self._train_arrays(epoch))

    def eval_pass(self) -> Iterator[Batch]:
        """Every row once, in stored order, view 0, the last batch partial."""
        return self._device_batches(self._eval_arrays)

    def host_train_epoch(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Training batches as host arrays, without the device copy (to time the reader alone)."""
        return prefetch(lambda: self._train_arrays(epoch), self.prefetch)

    # ------------------------------------------------------------------ producer side (reader thread)
    def _train_arrays(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        if isinstance(self.source, MemorySource):
            yield from self._train_arrays_in_memory(epoch)
            return
        rng = np.random.default_rng([self.data_seed, 0, epoch])
        order = rng.permutation(len(self._by_chunk))
        reads = rows_in_order(self.source, [self._request(i, epoch) for i in order.tolist()])
        B = self.batch_size
        carry_x: np.ndarray | None = None
        carry_y: np.ndarray | None = None
        for start in range(0, len(order), self.shuffle_chunks):
            xs, ys = [], []
            if carry_x is not None:
                xs.append(carry_x)
                ys.append(carry_y)
            for i in order[start : start + self.shuffle_chunks].tolist():
                chunk, local = self._by_chunk[i]
                xs.append(next(reads))
                ys.append(self.labels[chunk * self.source.chunk_samples + local])
            x, y = np.concatenate(xs), np.concatenate(ys)
            perm = rng.permutation(len(y))
            x, y = x[perm], y[perm]
            full = len(y) // B
            for j in range(full):
                yield x[j * B : (j + 1) * B], y[j * B : (j + 1) * B]
            carry_x, carry_y = x[full * B :], y[full * B :]

    def _request(self, i: int, epoch: int) -> Request:
        """Chunk ``i`` of the subset in ``epoch``: its rows and the view each row uses."""
        chunk, local = self._by_chunk[i]
        views = None
        if self._view_offset is not None:
            views = (epoch + self._view_offset[chunk * self.source.chunk_samples + local]) % self.views
        return chunk, local, views

    def _train_arrays_in_memory(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The batches of :meth:`_train_arrays`, computed on row indices and gathered once per batch.

        Same draws from the same generator in the same order (chunk order, buffer permutation,
        carry-over), so the batch sequence is identical to streaming; only the data moves once
        (one gather from RAM, already in the compute dtype) instead of three times.
        """
        assert isinstance(self.source, MemorySource)
        rng = np.random.default_rng([self.data_seed, 0, epoch])
        order = rng.permutation(len(self._by_chunk))
        B, cs = self.batch_size, self.source.chunk_samples
        carry = np.zeros(0, np.int64)
        for start in range(0, len(order), self.shuffle_chunks):
            parts = [carry]
            for i in order[start : start + self.shuffle_chunks].tolist():
                chunk, local = self._by_chunk[i]
                parts.append(chunk * cs + local)
            rows = np.concatenate(parts)
            rows = rows[rng.permutation(len(rows))]
            full = len(rows) // B
            for j in range(full):
                r = rows[j * B : (j + 1) * B]
                views = None if self._view_offset is None else (epoch + self._view_offset[r]) % self.views
                yield self.source.gather(r, views), self.labels[r]
            carry = rows[full * B :]

    def _eval_arrays(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        B = self.batch_size
        if isinstance(self.source, MemorySource) and np.array_equal(self.source.row_index, self.rows):
            for i in range(0, len(self.rows), B):  # rows held in stored order: batches are views, no copy
                yield self.source.data[i : i + B, 0], self.labels[self.rows[i : i + B]]
            return
        xs: list[np.ndarray] = []
        ys: list[np.ndarray] = []
        held = 0
        reads = rows_in_order(self.source, [(c, local, None) for c, local in self._by_chunk])
        for (chunk, local), x_chunk in zip(self._by_chunk, reads, strict=True):
            xs.append(x_chunk)
            ys.append(self.labels[chunk * self.source.chunk_samples + local])
            held += len(local)
            if held >= B:
                x, y = np.concatenate(xs), np.concatenate(ys)
                full = len(y) // B
                for j in range(full):
                    yield x[j * B : (j + 1) * B], y[j * B : (j + 1) * B]
                xs, ys, held = [x[full * B :]], [y[full * B :]], len(y) - full * B
        if held:
            yield np.concatenate(xs), np.concatenate(ys)

    # ------------------------------------------------------------------ consumer side
    def _device_batches(self, arrays: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]) -> Iterator[Batch]:
        cuda = self.device.type == "cuda"

        def host() -> Iterator[tuple[Tensor, Tensor]]:
            for x, y in arrays():
                tx, ty = to_torch(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))
                if cuda:  # pin in the reader thread so the copy below can overlap compute
                    tx, ty = tx.pin_memory(), ty.pin_memory()
                else:  # CPU: the one conversion to the compute dtype happens here, off the training thread
                    tx = tx.to(self.dtype)
                yield tx, ty

        waited = [0.0]
        copier = DeviceCopier(self.device, self.dtype)  # CPU: the conversion below is a no-op, already done
        host_batches = prefetch(host, self.prefetch, waited=waited)
        try:  # batch n+1's copy is issued before batch n trains
            for x, y in map(copier.finish, lookahead(host_batches, copier.start)):
                yield Batch(x, y)
        finally:
            host_batches.close()
            self.wait_seconds += waited[0]


def prefetch(make: Callable[[], Iterator[Any]], size: int, *, waited: list[float] | None = None) -> Iterator[Any]:
    """Run the iterator ``make()`` in a thread, at most ``size`` items ahead; errors re-raise here.

    Closing the consumer early (``break``) stops the thread at its next item. ``waited[0]``
    accumulates the seconds the consumer found the queue empty (the reader was behind).
    """
    q: queue.Queue[Any] = queue.Queue(maxsize=max(1, size))
    stop = threading.Event()

    def run() -> None:
        try:
            for item in make():
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(_DONE)
        except BaseException as e:  # handed to the consumer, which re-raises it
            q.put(_Failure(e))

    thread = threading.Thread(target=run, name="epcache-reader", daemon=True)
    thread.start()
    try:
        while True:
            try:
                item = q.get_nowait()
            except queue.Empty:
                t0 = time.perf_counter()
                item = q.get()
                if waited is not None:
                    waited[0] += time.perf_counter() - t0
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            with contextlib.suppress(queue.Empty):  # unblock a producer waiting on a full queue
                q.get_nowait()
            thread.join(timeout=0.05)


def rows_in_order(source: Source, requests: Sequence[Request]) -> Iterator[np.ndarray]:
    """``source.rows`` of each request in turn; sources that read a store read the chunks ahead."""
    ahead = getattr(source, "rows_in_order", None)
    if ahead is not None:
        return ahead(requests)  # type: ignore[no-any-return]
    return (source.rows(c, local, views) for c, local, views in requests)


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _rows_by_chunk(rows: np.ndarray, chunk_samples: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(chunk, local row indices)`` for sorted stored rows, chunks ascending."""
    if len(rows) == 0:
        return
    chunk_of = rows // chunk_samples
    bounds = np.flatnonzero(np.diff(chunk_of)) + 1
    for part in np.split(rows, bounds):
        c = int(part[0] // chunk_samples)
        yield c, part - c * chunk_samples
