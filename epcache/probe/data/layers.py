"""Input groups that read several layers together, or the store's pooled output.

A config with a layer mix (``concat``/``mean``/``tokens`` of layers ``l1..lk``) trains in the
group of every config reading the same layers: the reader fetches the k layers of a chunk
together (in parallel threads) and the batch carries all of them, ``(B, k, T', D)``; each head
derives its own input on the device (:class:`LayersRead`). So one pass over the store per epoch
serves every mix and source of the group, instead of one pass per layer.

``pooled`` configs read the per-split ``pooled`` array (cache_layout.md §3.4), one vector per
image, with :class:`PooledRead` and :class:`PooledSource`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from epcache.probe.config.inputs import POOLED_GROUP, input_key, read_layers
from epcache.probe.data.stream import InputRead, MemorySource, StoreSource, _rows_by_chunk
from epcache.store import FeatureStore, TokenLayout
from epcache.store.layout.tokens import to_torch

__all__ = [
    "LayersRead",
    "MultiLayerSource",
    "PooledRead",
    "PooledSource",
    "group_label",
    "load_memory",
    "make_read_spec",
    "make_source",
    "read_layers",
]

def group_label(runs: Sequence[Any]) -> str:
    """``layer11``, ``layers8-9-10-11`` or ``pooled``: names a group in messages and checkpoint files."""
    layers = read_layers(runs[0])
    if not layers:
        return POOLED_GROUP
    return f"layer{layers[0]}" if len(layers) == 1 else "layers" + "-".join(map(str, layers))


@dataclass(frozen=True)
class LayersRead:
    """:class:`InputRead` for a group of ``num_layers`` layers read together.

    ``keys`` are the group's input keys (``mean:patch``, ``concat:cls+gap`` ...); the per-layer
    packing is the base plan's, applied to ``[..., k, T, D]`` arrays.
    """

    keys: frozenset[str]
    layout: TokenLayout
    num_layers: int
    dtype: torch.dtype = torch.float32

    @property
    def base(self) -> InputRead:
        return InputRead(frozenset(k.split(":", 1)[-1] for k in self.keys), self.layout, self.dtype)

    @property
    def mode(self) -> str:
        return self.base.mode

    @property
    def reduce_mean(self) -> bool:
        """Every head of the group reads the layer mean: the reader averages, k times fewer bytes travel."""
        return all(k.startswith("mean:") for k in self.keys)

    def pack(self, x: np.ndarray) -> np.ndarray:
        """Reader side: ``[m, k, T, D]`` -> ``[m, k, T', D]`` (or per-layer vectors; ``[m, 1, ...]`` averaged)."""
        return self.pack_layers([x[:, i] for i in range(x.shape[1])])

    def pack_layers(self, layers: Sequence[np.ndarray]) -> np.ndarray:
        """Reader side from one ``[m, T, D]`` array per layer, with one copy of the packed data.

        A mean group accumulates the layers in the compute dtype and sends ``[m, 1, T', D]``.
        """
        base = self.base
        if self.reduce_mean:
            acc: Tensor | None = None
            for x in layers:
                t = to_torch(base.pack(x))  # a strided view: converted and summed without an extra copy
                acc = t.to(self.dtype, copy=True) if acc is None else acc.add_(t)
            assert acc is not None
            return acc.div_(len(layers)).unsqueeze(1).numpy()
        first = base.pack(layers[0])
        out = np.empty((first.shape[0], len(layers), *first.shape[1:]), first.dtype)
        out[:, 0] = first
        for i, x in enumerate(layers[1:], start=1):
            out[:, i] = base.pack(x)
        return out

    def derive(self, x: Tensor, key: str) -> Tensor:
        """Device side: one head's input from ``(B, k, T', D)`` (``(B, 1, T', D)`` when the reader averaged)."""
        base = self.base
        mix, tokens = key.split(":", 1)
        k = x.shape[1]
        if mix == "mean":
            return base.derive(x[:, 0] if self.reduce_mean else x.mean(dim=1), tokens)
        if mix == "concat":
            if tokens == "cls+gap":  # DINOv2: CLS of every layer, then the GAP of the last one
                parts = [base.derive(x[:, i], "cls") for i in range(k)] + [base.derive(x[:, -1], "gap")]
                return torch.cat(parts, dim=-1)
            return torch.cat([base.derive(x[:, i], tokens) for i in range(k)], dim=-1)
        if mix == "tokens":
            if tokens == "cls+gap":  # ALF: each layer's CLS and GAP as two tokens, layer by layer
                return torch.cat([base.derive(x[:, i], tokens).unflatten(-1, (2, -1)) for i in range(k)], dim=1)
            return torch.cat([base.derive(x[:, i], tokens) for i in range(k)], dim=1)
        raise ValueError(f"unknown layer mix in input key {key!r}")

    def packed_bytes_per_view(self, num_tokens: int, dim: int, itemsize: int) -> int:
        if self.reduce_mean:
            return self.base.packed_bytes_per_view(num_tokens, dim, torch.finfo(self.dtype).bits // 8)
        return self.num_layers * self.base.packed_bytes_per_view(num_tokens, dim, itemsize)


@dataclass(frozen=True)
class PooledRead:
    """The pooled output: one ``Dp`` vector per image, travelling as ``(B, 1, Dp)``."""

    dtype: torch.dtype = torch.float32

    @property
    def mode(self) -> str:
        return "vectors"

    def pack(self, x: np.ndarray) -> np.ndarray:
        return x[..., None, :]

    def derive(self, x: Tensor, key: str) -> Tensor:
        return x[:, 0].to(self.dtype)

    def packed_bytes_per_view(self, num_tokens: int, dim: int, itemsize: int) -> int:
        return dim * itemsize


class MultiLayerSource:
    """Rows of ``k`` layers of one split, each chunk's layers read concurrently: ``[m, k, T', D]``."""

    def __init__(
        self, store: FeatureStore, split: str, layers: Sequence[int], plan: LayersRead, *, decode_to: Any = None
    ) -> None:
        self.store, self.split, self.layers, self.plan = store, split, tuple(layers), plan
        self.decode_to = decode_to  # as StoreSource's
        self.chunk_samples = store.split(split).chunk_samples
        self._pool = ThreadPoolExecutor(max_workers=len(self.layers), thread_name_prefix="epcache-layer")

    def rows(self, chunk: int, local: np.ndarray, views: np.ndarray | None) -> np.ndarray:
        contiguous = views is None and len(local) and int(local[-1]) - int(local[0]) == len(local) - 1

        def read(layer: int) -> np.ndarray:
            data = self.store.read_chunk(self.split, layer, chunk, decode_to=self.decode_to)
            if contiguous:  # a whole run of rows: a view, copied once by pack_layers
                return data[int(local[0]) : int(local[-1]) + 1, 0]
            return data[local, 0] if views is None else data[local, views]  # [m, T, D]

        return self.plan.pack_layers(list(self._pool.map(read, self.layers)))

    def rows_in_order(self, requests: Sequence[Any]) -> Iterator[np.ndarray]:
        """:meth:`rows` of each ``(chunk, local, views)``; every layer's chunks read ahead (``read_chunks``)."""
        chunks = [r[0] for r in requests]
        if not self.store.is_remote:  # local disk: the layers of one chunk read concurrently, as in rows()
            yield from (self.rows(c, local, views) for c, local, views in requests)
            return
        reads = [self.store.read_chunks(self.split, layer, chunks, decode_to=self.decode_to) for layer in self.layers]
        for (_, local, views), *per_layer in zip(requests, *reads, strict=True):
            picked = [d[local, 0] if views is None else d[local, views] for _, d in per_layer]
            yield self.plan.pack_layers(picked)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __del__(self) -> None:
        self._pool.shutdown(wait=False)


class PooledSource:
    """Rows of a split's ``pooled`` array, one chunk at a time: ``[m, 1, Dp]``."""

    def __init__(self, store: FeatureStore, split: str, plan: PooledRead) -> None:
        self.store, self.split, self.plan = store, split, plan
        self.chunk_samples = store.split(split).chunk_samples

    def rows(self, chunk: int, local: np.ndarray, views: np.ndarray | None) -> np.ndarray:
        start, stop = self.store.chunk_range(self.split, chunk)
        data = self.store.read_pooled(self.split, start, stop)  # [n, V, Dp]
        return self.plan.pack(data[local, 0] if views is None else data[local, views])


ReadSpec = InputRead | LayersRead | PooledRead
Source = StoreSource | MultiLayerSource | PooledSource


def make_read_spec(runs: Sequence[Any], layout: TokenLayout, dtype: torch.dtype) -> ReadSpec:
    """The plan of one group: pooled, several layers, or the single-layer :class:`InputRead`."""
    layers = read_layers(runs[0])
    if not layers:
        return PooledRead(dtype)
    if len(layers) == 1:
        return InputRead(frozenset(r.tokens for r in runs), layout, dtype)
    return LayersRead(frozenset(input_key(r.tokens, r.layer_mix) for r in runs), layout, len(layers), dtype)


def make_source(
    store: FeatureStore, split: str, runs: Sequence[Any], plan: ReadSpec, *, decode_to: Any = None
) -> Source:
    """The streaming source for the group of ``runs``.

    ``decode_to``: the dtype a quantised store's chunks decode into (cache_layout.md §3.5): the compute
    dtype where batches are converted on the host (CPU), None (the store's dtype) where they travel to a
    GPU and are converted there. The pooled output is never quantised.
    """
    layers = read_layers(runs[0])
    if isinstance(plan, PooledRead):
        return PooledSource(store, split, plan)
    if isinstance(plan, LayersRead):
        return MultiLayerSource(store, split, layers, plan, decode_to=decode_to)
    return StoreSource(store, split, layers[0], plan, decode_to=decode_to)


def load_memory(
    source: Source, rows: np.ndarray, views: int, *, all_views: bool, dtype: torch.dtype | None = None
) -> MemorySource:
    """Read ``rows`` of any source once, chunk by chunk, into a :class:`MemorySource`.

    ``dtype``: convert the held rows to the compute dtype once (as ``MemorySource.load``).
    """
    if isinstance(source, StoreSource):  # one layer: the stream module's loader (each chunk read once)
        return MemorySource.load(source.store, source.split, source.layer, source.plan, rows, all_views=all_views,
                                 dtype=dtype)
    cs = source.chunk_samples
    rows = np.asarray(rows, np.int64)
    parts = []
    for chunk, local in _rows_by_chunk(rows, cs):
        if all_views:
            per_view = [source.rows(chunk, local, np.full(len(local), v)) for v in range(views)]
            parts.append(np.stack(per_view, axis=1))
        else:
            parts.append(source.rows(chunk, local, None)[:, None])
        if dtype is not None:
            parts[-1] = to_torch(np.ascontiguousarray(parts[-1])).to(dtype).numpy()
    data = np.concatenate(parts) if parts else np.zeros((0, 1, 1, 1), np.float32)
    return MemorySource(rows, np.ascontiguousarray(data), cs)
