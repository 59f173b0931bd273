"""Background block writer: disk writes overlap the next forward passes.

The queue is bounded, so a disk slower than the backbone stalls extraction instead of filling
RAM (each queued item is one write-block of every layer). Only this thread touches the store
while extraction runs (for a store behind a URL, it writes the layers of a block from a few
threads at once: each layer's write is a request, so several are in flight). A write error is
re-raised in the main thread at its next ``submit`` or at ``close``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import numpy as np

from epcache.store import FeatureStore

__all__ = ["MASKS_KEY", "BlockWriter", "WriterStats"]

_STOP = object()
MASKS_KEY = -2  # a block's masks (cache_layout.md §3.6): a thunk run on this thread, written before the layers
REMOTE_WRITES = 4  # layers of one block written at once to a store behind a URL (local disk: one at a time)


@dataclass(frozen=True, slots=True)
class WriterStats:
    """Where writing time went, to tell whether the disk kept up."""

    blocks: int  # write-blocks written (all layers of one block count once)
    bytes: int  # token bytes handed to the store
    write_s: float  # seconds the writer thread spent in store.write_block
    wait_s: float  # seconds the caller waited because the queue was full (compute stalled on disk)


class BlockWriter:
    """Writes ``{layer: array}`` blocks with ``store.write_block`` on a background thread.

    ``taps`` (``extract --taps``): ``{(tap, layer): array}`` entries of a block go to that tap's store.
    """

    def __init__(
        self, store: FeatureStore, *, max_pending: int = 2, taps: Mapping[str, FeatureStore] | None = None
    ) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be >= 1")
        self._store = store
        self._taps = dict(taps or {})
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None  # cleared once re-raised
        self._failed = False  # stays set: nothing is written after the first failure
        self._blocks = 0
        self._bytes = 0
        self._write_s = 0.0
        self._wait_s = 0.0
        self._pool = ThreadPoolExecutor(REMOTE_WRITES, "epcache-layer-writer") if store.is_remote else None
        self._thread = threading.Thread(target=self._run, name="epcache-block-writer", daemon=True)
        self._thread.start()

    def submit(self, split: str, block: int, arrays: Mapping[Any, np.ndarray]) -> None:
        """Queue one block (all layers); blocks while ``max_pending`` blocks are already queued.

        Raises:
            Exception: whatever an earlier write raised (the writer stops at its first error).
        """
        self._raise_pending()
        t0 = time.perf_counter()
        while True:
            try:
                self._queue.put((split, block, dict(arrays)), timeout=0.5)
                break
            except queue.Full:
                self._raise_pending()  # the writer died: never wait forever on a dead thread
        self._wait_s += time.perf_counter() - t0

    def close(self) -> WriterStats:
        """Write everything queued, stop the thread, and re-raise a write error if there was one."""
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()
        self._raise_pending()
        return self.stats

    @property
    def stats(self) -> WriterStats:
        return WriterStats(self._blocks, self._bytes, self._write_s, self._wait_s)

    def _raise_pending(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                if self._pool is not None:
                    self._pool.shutdown(wait=True)
                return
            if self._failed:
                continue  # drain without writing after a failure; the caller is told once
            split, block, arrays = item  # type: ignore[misc]
            try:
                t0 = time.perf_counter()
                if -1 in arrays:  # pooled first: before any record
                    self._store.write_pooled_block(split, block, arrays[-1])
                if MASKS_KEY in arrays:  # computed here, so decoding masks overlaps the next forward passes
                    arrays[MASKS_KEY] = arrays[MASKS_KEY]()  # type: ignore[operator]
                    self._store.write_masks_block(split, block, arrays[MASKS_KEY])
                keys = sorted(k for k in arrays if isinstance(k, int) and k >= 0)  # the main store, then taps
                keys += sorted(k for k in arrays if isinstance(k, tuple))
                stores = [self._taps[k[0]] if isinstance(k, tuple) else self._store for k in keys]
                layers = [k[1] if isinstance(k, tuple) else k for k in keys]
                datas = [arrays[k] for k in keys]
                if self._pool is None:
                    for st, layer, data in zip(stores, layers, datas, strict=True):
                        st.write_block(split, layer, block, data)
                else:  # object storage: each layer's objects are requests, several in flight (bench/scale_s3.py)
                    list(self._pool.map(_write, stores, repeat(split), layers, repeat(block), datas))
                self._bytes += sum(data.nbytes for data in arrays.values())
                self._write_s += time.perf_counter() - t0
                self._blocks += 1
            except BaseException as e:  # re-raised in the caller's thread
                self._error, self._failed = e, True


def _write(store: FeatureStore, split: str, layer: int, block: int, data: np.ndarray) -> None:
    store.write_block(split, layer, block, data)
