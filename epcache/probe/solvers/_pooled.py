"""Pooled view of a store: per layer, one CLS and one GAP vector per sample (PROBE_FAMILIES.md §0).

Solver heads (k-NN, ridge, logistic path, NCM) read a pooled ``[n, D]`` matrix, never the
``[N, T, D]`` tokens. The view is computed in ONE streamed pass over the chunks that hold the
requested rows (one chunk of tokens in memory at a time): CLS is token ``cls_index``, GAP is the
mean of the patch tokens (CLS and registers excluded), accumulated in float64 and stored as
float32 whatever the store dtype. Both vectors come from the same pass, so ``cls``, ``gap`` and
``cls+gap`` heads of a sweep share it.

The view is cached as ``.npy`` files (``allow_pickle=False``) in a directory beside the run
(``RUNDIR/pooled/``), keyed by store provenance, split, layer and the rows it holds, written to
a temporary name and renamed into place; the store's token arrays are never touched.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from epcache.errors import ConfigError, NonFiniteFeaturesError
from epcache.store import FeatureStore, to_torch

__all__ = ["POOLINGS", "PooledCache", "PooledView", "pool_rows"]

POOLINGS: tuple[str, ...] = ("cls", "gap", "cls+gap")


@dataclass(frozen=True)
class PooledView:
    """CLS and GAP vectors of some rows of one split and layer."""

    rows: np.ndarray  # stored row indices, sorted ascending
    cls: np.ndarray | None  # [n, D] float32, None when the backbone has no CLS token
    gap: np.ndarray  # [n, D] float32, mean of the patch tokens (registers excluded)

    def features(self, pooling: str) -> np.ndarray:
        """``[n, D]`` (or ``[n, 2D]`` for ``cls+gap``) float32.

        Raises:
            ConfigError: unknown pooling, or CLS asked of a backbone without one.
        """
        if pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {pooling!r}; solver heads read {', '.join(POOLINGS)}")
        if "cls" in pooling and self.cls is None:
            raise ConfigError("this store's backbone has no CLS token; use tokens gap")
        if pooling == "gap":
            return self.gap
        if pooling == "cls":
            return self.cls  # type: ignore[return-value]
        return np.concatenate([self.cls, self.gap], axis=1)  # type: ignore[list-item]

    def subset(self, rows: np.ndarray) -> PooledView:
        """The view restricted to ``rows`` (each must be held)."""
        pos = np.searchsorted(self.rows, rows)
        if len(rows) and (pos.max() >= len(self.rows) or not np.array_equal(self.rows[pos], rows)):
            raise ValueError("subset rows are not all held by this pooled view")
        return PooledView(np.asarray(rows, np.int64), None if self.cls is None else self.cls[pos], self.gap[pos])


def pool_rows(store: FeatureStore, split: str, layer: int, rows: np.ndarray) -> PooledView:
    """CLS and GAP of ``rows`` (view 0) in one streamed pass, one chunk in memory at a time.

    Raises:
        NonFiniteFeaturesError: some rows hold inf/nan tokens (typically float16 overflow at
            extraction); the message names the layer, the split and the rows.
    """
    rows = np.unique(np.asarray(rows, np.int64))
    layout = store.meta.layout
    P, D = layout.num_prefix, store.meta.dim
    cs = store.split(split).chunk_samples
    cls_out = np.empty((len(rows), D), np.float32) if layout.cls_index is not None else None
    gap_out = np.empty((len(rows), D), np.float32)
    bad: list[np.ndarray] = []
    chunk_of = rows // cs
    bounds = np.flatnonzero(np.diff(chunk_of)) + 1
    start = 0
    parts = np.split(rows, bounds) if len(rows) else []
    chunks = [int(p[0] // cs) for p in parts]  # read ahead (remote stores); quantised: decoded once, to float32
    reads = store.read_chunks(split, layer, chunks, decode_to=np.float32)
    for part, (chunk, data) in zip(parts, reads, strict=True):
        x = to_torch(np.ascontiguousarray(data[part - chunk * cs, 0]))  # (m, T, D)
        gap = x[:, P:].to(torch.float64).mean(dim=1)  # float64 accumulation over the patch tokens
        finite = torch.isfinite(gap).all(dim=1)
        sl = slice(start, start + len(part))
        gap_out[sl] = gap.to(torch.float32).numpy()
        if cls_out is not None:
            c = x[:, layout.cls_index].to(torch.float32)
            finite &= torch.isfinite(c).all(dim=1)
            cls_out[sl] = c.numpy()
        finite &= torch.isfinite(torch.from_numpy(gap_out[sl])).all(dim=1)  # float32 overflow of the mean
        if not bool(finite.all()):
            bad.append(part[~finite.numpy()])
        start += len(part)
    if bad:
        idx = np.concatenate(bad)
        shown = ", ".join(map(str, idx[:10].tolist())) + (", ..." if len(idx) > 10 else "")
        raise NonFiniteFeaturesError(
            f"{store.location}: split {split!r} layer {layer} has inf/nan tokens in {len(idx)} stored row(s) "
            f"[{shown}] (typically float16 overflow at extraction); solver heads would report NaN accuracies. "
            "Re-extract with --dtype bfloat16 or float32 (`epcache verify --deep` lists every bad block)"
        )
    return PooledView(rows, cls_out, gap_out)


class PooledCache:
    """Pooled views kept in memory for one run and, with a directory, on disk beside the run.

    Args:
        root: directory for ``.npy`` files (e.g. ``RUNDIR/pooled``); None keeps views in memory only.
    """

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self._memory: dict[str, PooledView] = {}

    def get(self, store: FeatureStore, split: str, layer: int, rows: np.ndarray) -> PooledView:
        """The pooled view of ``rows``: from memory, from disk, or computed (and saved) in one pass."""
        rows = np.unique(np.asarray(rows, np.int64))
        key = _key(store, split, layer, rows)
        if key in self._memory:
            return self._memory[key]
        view = self._load(key, rows)
        if view is None:
            view = pool_rows(store, split, layer, rows)
            self._save(key, view, {"store": store.location, "provenance": store.provenance, "split": split,
                                   "layer": layer, "rows": len(rows)})
        self._memory[key] = view
        return view

    def release(self) -> None:
        """Forget the views held in memory (files on disk stay): one layer's views at a time in RAM."""
        self._memory.clear()

    def _load(self, key: str, rows: np.ndarray) -> PooledView | None:
        if self.root is None:
            return None
        gap_file = self.root / f"{key}.gap.npy"
        if not gap_file.exists():
            return None
        try:
            gap = np.load(gap_file, allow_pickle=False)
            cls_file = self.root / f"{key}.cls.npy"
            cls = np.load(cls_file, allow_pickle=False) if cls_file.exists() else None
        except (OSError, ValueError):
            return None  # unreadable: recompute, which gives the same numbers
        if gap.shape[0] != len(rows) or (cls is not None and cls.shape != gap.shape):
            return None
        return PooledView(rows, cls, gap)

    def _save(self, key: str, view: PooledView, info: dict[str, object]) -> None:
        if self.root is None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        if view.cls is not None:  # CLS first: a view is complete once its GAP file exists
            _atomic_npy(self.root / f"{key}.cls.npy", view.cls)
        _atomic_npy(self.root / f"{key}.gap.npy", view.gap)
        (self.root / f"{key}.json").write_text(json.dumps(info) + "\n", encoding="utf-8")


def _key(store: FeatureStore, split: str, layer: int, rows: np.ndarray) -> str:
    digest = hashlib.sha256(store.provenance.encode() + split.encode() + np.ascontiguousarray(rows).tobytes())
    return f"{split}-layer{layer}-{digest.hexdigest()[:16]}"


def _atomic_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
