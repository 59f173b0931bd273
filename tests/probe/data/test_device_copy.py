"""The one-batch-ahead device copy (``probe/data/device_copy.py``), exercised on the CPU.

On CUDA the copy runs on its own stream from pinned memory; here the same code path runs with a
no-op copy, so what is checked is the ordering (batch n+1's copy starts before batch n is used),
that every batch arrives once, in order, in the compute dtype, and that early exits stop the reader.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from probe_helpers import write_store

from epcache.probe.data import stream as stream_module
from epcache.probe.data.device_copy import DeviceCopier, lookahead
from epcache.probe.data.reads import InputRead
from epcache.probe.data.stream import BatchStream, StoreSource
from epcache.store import open_store


def test_lookahead_starts_the_next_item_before_yielding() -> None:
    log: list[str] = []

    def items() -> Iterator[int]:
        for i in range(3):
            log.append(f"read {i}")
            yield i

    def start(i: int) -> int:
        log.append(f"start {i}")
        return i

    for i in lookahead(items(), start):
        log.append(f"use {i}")
    assert log == ["read 0", "start 0", "read 1", "start 1", "use 0", "read 2", "start 2", "use 1", "use 2"]
    assert list(lookahead(iter([]), start)) == []
    assert list(lookahead(iter([7]), start)) == [7]


def test_copier_on_cpu_converts_to_the_compute_dtype() -> None:
    copier = DeviceCopier(torch.device("cpu"), torch.float64)
    assert copier.stream is None  # no copy stream and no pinning without CUDA
    x, y = copier.finish(copier.start((torch.ones(2, 3, dtype=torch.float16), torch.tensor([0, 1]))))
    assert x.dtype == torch.float64 and torch.equal(y, torch.tensor([0, 1]))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_store(tmp_path_factory.mktemp("copy") / "s.zarr", n_train=96, n_val=16)


def _stream(store: Path) -> BatchStream:
    st = open_store(store)
    src = StoreSource(st, "train", 1, InputRead(frozenset({"patch"}), st.meta.layout))
    return BatchStream(src, np.arange(96), st.read_labels("train"), batch_size=16, device=torch.device("cpu"),
                       dtype=torch.float32, data_seed=0)


def test_stream_copies_one_batch_ahead(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[tuple[str, int]] = []
    plain = [b.y.clone() for b in _stream(store).train_epoch(0)]

    class Recording(DeviceCopier):
        def start(self, batch):  # type: ignore[no-untyped-def]
            log.append(("start", int(batch[1][0])))
            return super().start(batch)

        def finish(self, started):  # type: ignore[no-untyped-def]
            log.append(("finish", int(started[1][0])))
            return super().finish(started)

    monkeypatch.setattr(stream_module, "DeviceCopier", Recording)
    got = []
    for b in _stream(store).train_epoch(0):
        log.append(("train", int(b.y[0])))
        got.append(b.y)
    assert all(torch.equal(a, b) for a, b in zip(plain, got, strict=True)) and len(got) == 6
    first = [y[0].item() for y in got]
    want = [("start", first[0])]
    for n in range(6):  # batch n+1's copy is issued before batch n trains
        if n + 1 < 6:
            want.append(("start", first[n + 1]))
        want += [("finish", first[n]), ("train", first[n])]
    assert log == want


def test_early_exit_stops_the_reader(store: Path) -> None:
    s = _stream(store)
    batches = s.train_epoch(0)
    next(batches)
    batches.close()  # the reader thread is joined in prefetch's finally
    import threading

    assert not any(t.name == "epcache-reader" and t.is_alive() for t in threading.enumerate())
