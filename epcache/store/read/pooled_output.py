"""The optional per-split ``pooled`` array: the model's own pooled output (cache_layout.md §3.4).

``splits/<split>/pooled`` holds ``[N, V, D_pooled]`` in the store's storage dtype, rows in stored
order and chunked by ``chunk_samples`` like the token arrays. Its width is recorded under
``extra.pooled`` (``{"dim": D_pooled, "source": ...}``), so adding it changes neither the format
version nor the provenance key. The extractor writes a block's pooled rows *before* that
block's token records, so a block whose records are set has its pooled rows too. Stores
written without it still open; asking them for it raises :class:`MissingPooledError`.
"""

from __future__ import annotations

import numpy as np

from epcache.errors import MissingPooledError, ShapeMismatchError
from epcache.store.layout.meta import SplitMeta, StoreMeta
from epcache.store.protocol import StoreCore

__all__ = ["POOLED_SOURCE", "PooledArrays"]

POOLED_SOURCE = "timm forward_head(pre_logits=True)"


class PooledArrays(StoreCore):
    """Mixin of :class:`~epcache.store.FeatureStore`: create, write and read the ``pooled`` arrays.

    Backends provide ``_create_pooled_array``, ``_write_pooled``, ``_read_pooled`` and ``_has_pooled``.
    """

    meta: StoreMeta
    location: str

    @property
    def pooled_dim(self) -> int | None:
        """Width of the pooled output, or None when the store has none."""
        info = self.meta.extra.get("pooled")
        return int(info["dim"]) if isinstance(info, dict) and "dim" in info else None

    def has_pooled(self, split: str) -> bool:
        """Whether ``split`` holds a ``pooled`` array."""
        self.split(split)
        return self.pooled_dim is not None and self._has_pooled(split)

    def require_pooled(self, split: str) -> None:
        """Raises :class:`MissingPooledError` unless ``split`` has its ``pooled`` array."""
        if not self.has_pooled(split):
            raise MissingPooledError(
                f"{self.location}: split {split!r} has no 'pooled' array (the model's own pooled output); "
                "the store was extracted without it. Re-extract with `epcache extract --pooled`, or probe "
                "tokens cls/gap instead"
            )

    def add_pooled(self, split: str, dim: int) -> None:
        """Create ``split``'s pooled array ``[N, V, dim]`` (zeros) and record its width."""
        self._require_writable()
        s: SplitMeta = self.split(split)
        if self.pooled_dim not in (None, dim):
            raise ShapeMismatchError(f"the store's pooled output has width {self.pooled_dim}, not {dim}")
        if not self._has_pooled(split):
            self._create_pooled_array(split, (s.num_samples, s.views, dim), (s.chunk_samples, s.views, dim))
        if self.pooled_dim is None:
            self.set_extra("pooled", {"dim": dim, "source": POOLED_SOURCE})

    def write_pooled_block(self, split: str, block: int, data: np.ndarray) -> None:
        """Pooled rows of write-block ``block``, ``[rows, V, D_pooled]`` in the logical dtype."""
        self.require_pooled(split)
        start, stop = self.block_range(split, block)
        want = (stop - start, self.split(split).views, self.pooled_dim)
        if tuple(data.shape) != want:
            raise ShapeMismatchError(f"pooled block {block} of {split!r} must have shape {want}, got {data.shape}")
        self._write_pooled(split, start, np.ascontiguousarray(data).view(self.meta.value_storage_dtype))

    def read_pooled(self, split: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Pooled rows ``[start, stop)`` as ``[n, V, D_pooled]`` in the logical dtype."""
        self.require_pooled(split)
        n = self.split(split).num_samples
        stop = n if stop is None else stop
        if not 0 <= start <= stop <= n:
            raise IndexError(f"rows [{start}, {stop}) out of range for split {split!r} ({n})")
        return self._logical(self._read_pooled(split, start, stop))

    # backend primitives
    def _create_pooled_array(self, split: str, shape: tuple[int, int, int], chunks: tuple[int, int, int]) -> None:
        raise NotImplementedError

    def _write_pooled(self, split: str, start: int, data: np.ndarray) -> None:
        raise NotImplementedError

    def _read_pooled(self, split: str, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError

    def _has_pooled(self, split: str) -> bool:
        raise NotImplementedError
