"""What the store's helpers may use of a store: the members of ``FeatureStore`` they rely on.

The read mixins (``read/``), the absent-chunk rule and the zarr chunk sources (``backends/``) are
parts of :class:`~epcache.store.core.FeatureStore` written in their own modules. They name the
store members they call here, so that each is checked against what the store provides and none
reaches further into it than this.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from epcache.store.layout.meta import SplitMeta, StoreMeta
from epcache.store.layout.quant import QuantSpec

__all__ = ["StoreCore", "ZarrCore"]


class StoreCore(Protocol):
    """The store as its read mixins and chunk rules see it: metadata, checks, records and backend primitives."""

    meta: StoreMeta
    location: str
    read_only: bool
    format_version: str

    @property
    def is_remote(self) -> bool: ...

    @property
    def quant(self) -> QuantSpec | None: ...

    def split(self, name: str) -> SplitMeta: ...

    def _check_layer(self, layer: int) -> None: ...

    def _require_writable(self) -> None: ...

    def set_extra(self, key: str, value: Any) -> None: ...

    def block_range(self, split: str, block: int) -> tuple[int, int]: ...

    def block_records(self, split: str, layer: int) -> np.ndarray: ...

    def chunk_range(self, split: str, chunk: int) -> tuple[int, int]: ...

    def read_chunk(self, split: str, layer: int, chunk: int, *, decode_to: Any = None) -> np.ndarray: ...

    def _chunk_present(self, split: str, layer: int, chunk: int) -> bool: ...

    def _finish_block(self, split: str, layer: int, block: int, chunk_crcs: list[int], whole: int) -> None: ...

    def _read_array(self, split: str, layer: int, start: int, stop: int) -> np.ndarray: ...

    def _write_array(self, split: str, layer: int, start: int, data: np.ndarray) -> None: ...

    def _read_vector(self, split: str, name: str) -> np.ndarray: ...

    def _read_scales(self, split: str, layer: int, start: int, stop: int) -> np.ndarray: ...

    def _write_scales(self, split: str, layer: int, start: int, data: np.ndarray) -> None: ...

    def _read_chunk_scales(self, split: str, layer: int, chunk: int) -> np.ndarray: ...

    def _scale_rows(self, split: str, first_chunk: int, end_chunk: int) -> tuple[int, int]: ...

    def _decode_chunk(
        self, split: str, layer: int, codes: np.ndarray, scales: np.ndarray, dtype: Any = None
    ) -> np.ndarray: ...

    def _read_decoded_rows(self, split: str, layer: int, start: int, stop: int) -> np.ndarray: ...

    def _logical(self, raw: np.ndarray) -> np.ndarray: ...

    def _create_pooled_array(self, split: str, shape: tuple[int, int, int], chunks: tuple[int, int, int]) -> None: ...

    def _write_pooled(self, split: str, start: int, data: np.ndarray) -> None: ...

    def _read_pooled(self, split: str, start: int, stop: int) -> np.ndarray: ...

    def _has_pooled(self, split: str) -> bool: ...


class ZarrCore(StoreCore, Protocol):
    """A zarr store as its direct chunk reads see it: the array handles and the per-split plans on top."""

    _splits: dict[str, SplitMeta]

    def _array(self, split: str, kind: str, name: str) -> Any: ...
