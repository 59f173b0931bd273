"""Pooled view of a store: per layer, one CLS and one GAP vector per sample (docs/PROBE_FAMILIES.md §0).

Solver heads (k-NN, ridge, logistic path, NCM) read a pooled ``[n, D]`` matrix, never the
``[N, T, D]`` tokens. The view is computed in ONE streamed pass over the chunks that hold the
requested rows (one chunk of tokens in memory at a time): CLS is token ``cls_index``, GAP is the
mean of the patch tokens (CLS and registers excluded), accumulated in float64 and stored as
float32 whatever the store dtype. Both vectors come from the same pass, so ``cls``, ``gap`` and
``cls+gap`` heads of a sweep share it.

The view is cached as ``.npy`` files (``allow_pickle=False``) in a directory beside the run
(``RUNDIR/pooled/``), the store's token arrays never touched. An entry is trusted no more than
the store it came from:

- its key hashes the store's provenance, the split, the layer, the rows it holds AND the crc32c
  records of the blocks those rows lie in (a block's record covers every chunk in it), so a store
  re-extracted or rewritten under the same path gets new entries instead of old vectors;
- ``<key>.json``, written last, records the sha256 of each array (dtype, shape and bytes) as the
  pass over the verified store reads produced it; a load whose arrays do not hash to it (rows
  shuffled, values scaled or negated, a torn or foreign file) is not used: the view is pooled
  from the store again, with one note, and rewritten. A killed write leaves no ``.json`` (or a
  stale one), so it is recomputed too.

What it does not protect against: someone who can write the run directory and recomputes the
sha256 in ``<key>.json`` after editing an array. The run directory is the user's own; the
guard is against edits, copies and tools that change the arrays, not against that user.
Rows record where their vectors came from (``input.features_from``: ``store``, ``cache`` or
``store+cache`` when the train and eval views differ).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from epcache._fs.atomic import atomic_write
from epcache.errors import ConfigError, NonFiniteFeaturesError
from epcache.probe.rundir import check_pooled_dir
from epcache.store import FeatureStore
from epcache.store.layout.tokens import to_torch

__all__ = ["POOLINGS", "PooledCache", "PooledView", "pool_rows"]

POOLINGS: tuple[str, ...] = ("cls", "gap", "cls+gap")
_FORMAT = "epcache-pooled/2"  # /2: keyed by the blocks' crc32c records, arrays checked by sha256


@dataclass(frozen=True)
class PooledView:
    """CLS and GAP vectors of some rows of one split and layer."""

    rows: np.ndarray  # stored row indices, sorted ascending
    cls: np.ndarray | None  # [n, D] float32, None when the backbone has no CLS token
    gap: np.ndarray  # [n, D] float32, mean of the patch tokens (registers excluded)
    from_cache: bool = False  # read back from RUNDIR/pooled (verified) rather than pooled from the store

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
        return PooledView(np.asarray(rows, np.int64), None if self.cls is None else self.cls[pos], self.gap[pos],
                          self.from_cache)


def pool_rows(store: FeatureStore, split: str, layer: int, rows: np.ndarray) -> PooledView:
    """CLS and GAP of ``rows`` (view 0) in one streamed pass, one chunk in memory at a time.

    Raises:
        NonFiniteFeaturesError: some rows hold inf/nan tokens (typically float16 overflow at
            extraction); the message names the layer, the split and the rows.
    """
    rows = np.unique(np.asarray(rows, np.int64))
    layout = store.meta.layout
    P, D = layout.num_prefix, store.meta.layer_shape(layer)[1]  # a convnet's stages differ in width
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
        say: where the note about an entry that failed its check goes (the probe's progress notes).

    Raises:
        ConfigError: ``root`` exists and is not a directory.
    """

    def __init__(self, root: Path | None, *, say: Callable[[str], None] = lambda msg: None) -> None:
        if root is not None:
            check_pooled_dir(root)
        self.root = root
        self.say = say
        self._memory: dict[str, PooledView] = {}

    def get(self, store: FeatureStore, split: str, layer: int, rows: np.ndarray) -> PooledView:
        """The pooled view of ``rows``: from memory, from a verified file, or computed (and saved) in one pass."""
        rows = np.unique(np.asarray(rows, np.int64))
        info = _entry_info(store, split, layer, rows)
        key = f"{split}-layer{layer}-{info['key'][:16]}"
        if key in self._memory:
            return self._memory[key]
        view = self._load(key, rows, info)
        if view is None:
            view = pool_rows(store, split, layer, rows)
            self._save(key, view, info)
        self._memory[key] = view
        return view

    def release(self) -> None:
        """Forget the views held in memory (files on disk stay): one layer's views at a time in RAM."""
        self._memory.clear()

    def _load(self, key: str, rows: np.ndarray, info: dict[str, Any]) -> PooledView | None:
        if self.root is None:
            return None
        files = [self.root / f"{key}{ext}" for ext in (".json", ".gap.npy", ".cls.npy")]
        if not any(f.exists() for f in files):
            return None  # never written: a plain miss, nothing to say
        view, why = _verified(files, rows, info)
        if view is None:
            self.say(f"note: pooled cache entry {self.root / key}.* fails its check against the store's records "
                     f"({why}); pooling split {info['split']!r} layer {info['layer']} from the store again")
        return view

    def _save(self, key: str, view: PooledView, info: dict[str, Any]) -> None:
        if self.root is None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        record = self.root / f"{key}.json"
        record.unlink(missing_ok=True)  # an entry being rewritten is incomplete, never half old, half new
        cls_file = self.root / f"{key}.cls.npy"
        if view.cls is not None:
            _atomic_write(cls_file, lambda f: np.save(f, view.cls, allow_pickle=False))
        else:
            cls_file.unlink(missing_ok=True)
        _atomic_write(self.root / f"{key}.gap.npy", lambda f: np.save(f, view.gap, allow_pickle=False))
        doc = {**info, "sha256": {"gap": _array_sha256(view.gap),
                                  "cls": None if view.cls is None else _array_sha256(view.cls)}}
        _atomic_write(record, lambda f: f.write((json.dumps(doc) + "\n").encode()))  # last: the entry is complete


def _entry_info(store: FeatureStore, split: str, layer: int, rows: np.ndarray) -> dict[str, Any]:
    """What an entry is derived from: provenance, split, layer, rows and the crc32c records of their blocks."""
    s = store.split(split)
    blocks = np.unique(rows // s.block_samples)
    records = np.asarray(store.block_records(split, layer), np.int64)[blocks]
    rows_sha = hashlib.sha256(np.ascontiguousarray(rows, "<i8").tobytes()).hexdigest()
    records_sha = hashlib.sha256(np.ascontiguousarray(blocks, "<i8").tobytes()
                                 + np.ascontiguousarray(records, "<i8").tobytes()).hexdigest()
    info: dict[str, Any] = {"format": _FORMAT, "store": store.location, "provenance": store.provenance,
                            "split": split, "layer": layer, "rows": len(rows), "rows_sha256": rows_sha,
                            "block_records_sha256": records_sha}
    keyed = {k: info[k] for k in ("format", "provenance", "split", "layer", "rows_sha256", "block_records_sha256")}
    info["key"] = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()
    return info


def _verified(files: list[Path], rows: np.ndarray, info: dict[str, Any]) -> tuple[PooledView | None, str]:
    """The entry's view if its record matches ``info`` and its arrays hash to the record, else why not."""
    record, gap_file, cls_file = files
    try:
        doc = json.loads(record.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, "its record .json is missing"
    except (OSError, ValueError):
        return None, "its record .json is unreadable"
    if not isinstance(doc, dict) or not isinstance(doc.get("sha256"), dict):
        return None, "its record .json holds no sha256"
    if any(doc.get(k) != info[k] for k in ("format", "provenance", "split", "layer", "rows", "key")):
        return None, "its record is of another store, layer or row set"
    expected = doc["sha256"]
    try:
        gap = np.load(gap_file, allow_pickle=False)
        cls = np.load(cls_file, allow_pickle=False) if expected.get("cls") is not None else None
    except (OSError, ValueError):
        return None, "an array is missing or unreadable"
    if _array_sha256(gap) != expected.get("gap") or (cls is not None and _array_sha256(cls) != expected["cls"]):
        return None, "an array's sha256 differs"
    if gap.dtype != np.float32 or gap.ndim != 2 or gap.shape[0] != len(rows):
        return None, "an array has the wrong shape"  # only a record written by hand for it gets here
    return PooledView(rows, cls, gap, from_cache=True), ""


def _array_sha256(array: np.ndarray) -> str:
    """sha256 of dtype, shape and C-order bytes: a reordered, rescaled or re-typed array hashes differently."""
    h = hashlib.sha256(f"{array.dtype.str}{tuple(array.shape)}".encode())
    h.update(np.ascontiguousarray(array).reshape(-1).view(np.uint8))
    return h.hexdigest()


def _atomic_write(path: Path, write: Callable[[Any], object]) -> None:
    """A killed run leaves ``.<name>.tmp-<pid>`` (removed on the next run, ``remove_stale_checkpoints``),
    never a torn entry."""
    atomic_write(path, write)
