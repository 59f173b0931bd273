"""The store side of quantised tokens: what a block's stored parts are, and how chunks decode.

A block of an unquantised store is one array (the tokens' bytes). A quantised block is two: the
codes (in the token array) and their scales (``splits/<split>/scales/<L>``, cache_layout.md §3.5).
Records cover both: the crc32c of a chunk is over its codes' bytes followed by its scales' bytes,
and a block's record is over its chunks' (codes ‖ scales) in row order, so one corrupt byte in
either fails ``verify`` and the probe's read checks, exactly like a corrupt token byte.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from epcache.errors import ShapeMismatchError
from epcache.store.layout.chunking import NUMPY_DTYPES
from epcache.store.layout.meta import SplitMeta
from epcache.store.layout.quant import QuantSpec, quant_spec, quantize_chunk, scales_shape
from epcache.store.protocol import StoreCore
from epcache.store.read.dequant import dequantize

__all__ = ["QuantArrays", "parts_checksum"]


def parts_checksum(parts: Sequence[np.ndarray]) -> int:
    """crc32c of the concatenated bytes of ``parts`` (C order), without joining them."""
    import google_crc32c

    crc = 0
    for p in parts:
        view = np.ascontiguousarray(p).reshape(-1).view(np.uint8).view()
        view.flags.writeable = False
        crc = int(google_crc32c.extend(crc, view))
    return crc


class QuantArrays(StoreCore):
    """Mixin of ``FeatureStore``: quantised encode/decode over the backends' scales primitives."""

    @property
    def quant(self) -> QuantSpec | None:
        q = self.meta.quantization
        return None if q is None else quant_spec(q)

    def scales_layout(
        self, s: SplitMeta, layer: int
    ) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...] | None]:
        """(shape, chunk shape, shard shape or None) of a split's scales array (cache_layout.md §3.5).

        Chunk k of the scales holds the scales of codes chunk k, so a reader of one codes chunk reads
        one scales chunk, and a sharded block's scales are one shard written with the block.
        """
        q = self.quant
        assert q is not None
        t, d = self.meta.layer_shape(layer)
        shape = scales_shape(q, rows=s.num_samples, chunk_samples=s.chunk_samples, views=s.views, tokens=t, dim=d)
        per_block = s.block_samples // s.chunk_samples
        if q.scales == "channel":
            chunk_rows, shard_rows = 1, per_block
        else:
            chunk_rows, shard_rows = s.chunk_samples, s.block_samples
        return shape, (chunk_rows, *shape[1:]), ((shard_rows, *shape[1:]) if per_block > 1 else None)

    def _scale_rows(self, split: str, first_chunk: int, end_chunk: int) -> tuple[int, int]:
        """Rows of the scales array that belong to codes chunks ``[first_chunk, end_chunk)``."""
        if self.quant.scales == "channel":  # type: ignore[union-attr]
            return first_chunk, end_chunk
        s = self.split(split)
        return first_chunk * s.chunk_samples, min(s.num_samples, end_chunk * s.chunk_samples)

    def _encode_block(self, split: str, data: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[int], int]:
        """Codes and scales of a block (float data in any float dtype), each chunk's crc32c and the block's."""
        q = self.quant
        assert q is not None
        if data.dtype.kind not in "fV" and data.dtype != np.dtype(NUMPY_DTYPES["bfloat16"]):
            raise ShapeMismatchError(f"a quantised store takes float tokens, got dtype {data.dtype}")
        cs = self.split(split).chunk_samples
        codes = np.empty(data.shape, q.code_dtype)
        scales: list[np.ndarray] = []
        for i in range(0, len(data), cs):
            c, sc = quantize_chunk(q, data[i : i + cs])
            codes[i : i + cs] = c
            scales.append(sc[None] if q.scales == "channel" else sc)
        joined = np.concatenate(scales)
        crcs, whole = self._checksums(split, codes, joined)
        return codes, joined, crcs, whole

    def _checksums(self, split: str, codes: np.ndarray, scales: np.ndarray) -> tuple[list[int], int]:
        """Per-chunk crc32c of (codes ‖ scales), and the block's over every chunk's in row order."""
        cs = self.split(split).chunk_samples
        per = 1 if self.quant.scales == "channel" else cs  # type: ignore[union-attr]
        parts = [(codes[i : i + cs], scales[k * per : (k + 1) * per]) for k, i in enumerate(range(0, len(codes), cs))]
        return [parts_checksum(p) for p in parts], parts_checksum([a for p in parts for a in p])

    def _decode_chunk(
        self, split: str, layer: int, codes: np.ndarray, scales: np.ndarray, dtype: Any = None
    ) -> np.ndarray:
        assert self.quant is not None
        out = np.dtype(NUMPY_DTYPES[self.meta.dtype] if dtype is None else dtype)
        return dequantize(self.quant, codes, scales, out)

    def _read_decoded_rows(self, split: str, layer: int, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` decoded, chunk by chunk through ``read_chunk`` (codes need their chunk's scales)."""
        s = self.split(split)
        out = np.empty((stop - start, s.views, *self.meta.layer_shape(layer)), NUMPY_DTYPES[self.meta.dtype])
        for c in range(start // s.chunk_samples, -(-stop // s.chunk_samples)):
            a, b = self.chunk_range(split, c)
            lo, hi = max(a, start), min(b, stop)
            out[lo - start : hi - start] = self.read_chunk(split, layer, c)[lo - a : hi - a]
        return out

    def _read_chunk_scales(self, split: str, layer: int, chunk: int) -> np.ndarray:
        """The scales of one codes chunk: ``[D]`` per channel, ``[n, V, T]`` per token."""
        a, b = self._scale_rows(split, chunk, chunk + 1)
        out = np.asarray(self._read_scales(split, layer, a, b), dtype=np.float32)
        return out.reshape(-1) if self.quant.scales == "channel" else out  # type: ignore[union-attr]

    def stored_parts(self, split: str, layer: int, first_chunk: int, end_chunk: int) -> list[np.ndarray]:
        """What chunks ``[first_chunk, end_chunk)`` store, through the library path: tokens, or codes and scales."""
        start = self.chunk_range(split, first_chunk)[0]
        stop = self.chunk_range(split, end_chunk - 1)[1]
        raw = np.ascontiguousarray(self._read_array(split, layer, start, stop))
        if self.quant is None:
            return [raw]
        scales = self._read_scales(split, layer, *self._scale_rows(split, first_chunk, end_chunk))
        return [raw, np.ascontiguousarray(scales)]

    def write_stored_parts(self, split: str, layer: int, block: int, parts: Sequence[np.ndarray]) -> None:
        """Put back a block's stored parts as read by ``stored_parts`` (a repair's backup), records included."""
        s = self.split(split)
        start, _ = self.block_range(split, block)
        first = start // s.chunk_samples
        cs = s.chunk_samples
        raw = parts[0]
        if self.quant is None:
            crcs, whole = [parts_checksum((raw[i : i + cs],)) for i in range(0, len(raw), cs)], parts_checksum((raw,))
        else:
            self._write_scales(split, layer, self._scale_rows(split, first, first)[0], parts[1])
            crcs, whole = self._checksums(split, raw, parts[1])
        self._write_array(split, layer, start, raw)
        self._finish_block(split, layer, block, crcs, whole)

    # backend primitives
    def _read_scales(self, split: str, layer: int, start: int, stop: int) -> np.ndarray:
        raise NotImplementedError

    def _write_scales(self, split: str, layer: int, start: int, data: np.ndarray) -> None:
        raise NotImplementedError
