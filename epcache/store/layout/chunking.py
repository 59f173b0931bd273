"""Chunk and shard sizes of a split (cache_layout.md §3.2), and the numpy dtypes of the store."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import ml_dtypes
import numpy as np

from epcache.errors import ShapeMismatchError

__all__ = ["MISSING", "NUMPY_DTYPES", "ChunkPlan", "ids_utf8", "plan_chunks", "storage_permutation"]

MISSING = -1  # block record value of a block that was never (completely) written
TARGET_CHUNK_BYTES = 6 * 1024 * 1024  # a chunk is the read unit: a few MB amortises per-call cost
MAX_CHUNK_SAMPLES = 1024
SHARD_WHEN_CHUNKS_ABOVE = 2048  # more chunk files than this per layer and split -> zarr sharding
SHARD_BUFFER_BYTES = 1536 * 1024 * 1024  # writer memory: one shard per layer must fit in this
MAX_SHARD_BYTES = 512 * 1024 * 1024

NUMPY_DTYPES: dict[str, np.dtype] = {
    "float16": np.dtype("<f2"),
    "float32": np.dtype("<f4"),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
}


@dataclass(frozen=True)
class ChunkPlan:
    """Sample counts per chunk (read unit) and per block (write unit; a shard when sharded)."""

    chunk_samples: int
    block_samples: int

    @property
    def sharded(self) -> bool:
        return self.block_samples != self.chunk_samples


def plan_chunks(
    num_samples: int,
    sample_bytes: int,
    num_layers: int,
    *,
    chunk_samples: int | None = None,
    shard_samples: int | None = None,
) -> ChunkPlan:
    """Choose chunk and shard sizes (cache_layout.md §3.2 states this rule exactly).

    Chunks hold whole samples and aim at a few MB: e.g. 16 samples of 197 x 768 float16 (4.8 MB).
    A split whose layer would need more than a few thousand chunk files gets zarr sharding so an
    ImageNet-size store is thousands of files, not millions; the shard is the write unit and the
    writer holds one per layer in memory, so the shard size is bounded by a memory budget. A shard
    never holds more chunks than the split has: a larger one would be mostly empty index.
    """
    if chunk_samples is None:
        fit = max(1, TARGET_CHUNK_BYTES // max(1, sample_bytes))
        chunk_samples = 1 << (fit.bit_length() - 1)  # power of two at or below the target
        chunk_samples = min(chunk_samples, MAX_CHUNK_SAMPLES)
    if chunk_samples < 1:
        raise ShapeMismatchError(f"chunk_samples must be >= 1, got {chunk_samples}")
    chunk_samples = min(chunk_samples, max(1, num_samples))  # a chunk never exceeds the split (HDF5 requires it)
    num_chunks = -(-num_samples // chunk_samples)
    if shard_samples is None:
        if num_chunks <= SHARD_WHEN_CHUNKS_ABOVE:
            return ChunkPlan(chunk_samples, chunk_samples)
        chunk_bytes = chunk_samples * sample_bytes
        budget = min(MAX_SHARD_BYTES, SHARD_BUFFER_BYTES // max(1, num_layers))
        per_shard = max(1, budget // chunk_bytes)
        shard_samples = per_shard * chunk_samples
    if shard_samples < 1 or shard_samples % chunk_samples:
        raise ShapeMismatchError(f"shard_samples={shard_samples} is not a multiple of chunk_samples={chunk_samples}")
    shard_samples = min(shard_samples, max(1, num_chunks) * chunk_samples)  # capped at the split
    return ChunkPlan(chunk_samples, shard_samples)


def storage_permutation(num_samples: int, seed: int) -> np.ndarray:
    """The seeded permutation of dataset order used as stored order (cache_layout.md §3.1)."""
    return np.random.default_rng(seed).permutation(num_samples).astype(np.int64)


def ids_utf8(ids: Sequence[str]) -> np.ndarray:
    """The ids as a ``uint8 [N, W]`` array of UTF-8 bytes, zero-padded to the longest (W >= 1)."""
    encoded = [i.encode("utf-8") for i in ids]
    width = max([1, *(len(e) for e in encoded)])
    out = np.zeros((len(encoded), width), np.uint8)
    for row, e in enumerate(encoded):
        out[row, : len(e)] = np.frombuffer(e, np.uint8)
    return out
