"""Bytes on disk of a store under each storage option, so a user can choose before spending GPU hours.

`extract --dry-run` prints the table for the planned store, `epcache info` for an existing one.
The figures are exact for the token arrays and their scales (cache_layout.md §3, §3.5), uncompressed;
labels, ids and records are left out (bytes per sample, not per token). ``2x2-pooled`` is the patch
grid averaged over 2x2 windows (``--pool-patches 2``: ``h/2 x w/2``, prefix tokens kept) in float16;
it is left out when a layer's grid has an odd side (pooling refuses it, cache_layout.md §2.4). ``light``
is every grid averaged into one token, prefix kept (``--keep cls,gap,registers``, cache_layout.md §2.6).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from epcache._text import human_bytes
from epcache.store.layout.meta import StoreMeta

__all__ = ["SizeOption", "format_size_table", "size_options"]


@dataclass(frozen=True)
class SizeOption:
    """One way to store the same tokens."""

    name: str  # "float32", "float16", "bfloat16", "int8-channel", "int8-token", "fp8-e4m3", "2x2-pooled"
    bytes: int
    how: str  # the flag that gives it


def size_options(meta: StoreMeta, splits: Iterable[tuple[int, int, int]]) -> list[SizeOption]:
    """Sizes of every option for splits given as ``(num_samples, views, chunk_samples)``."""
    splits = list(splits)
    p = meta.layout.num_prefix

    def total(itemsize: int, *, token: int = 0, chunk_dim: int = 0, grid2: bool = False, light: bool = False) -> int:
        out = 0
        for layer in meta.layers:
            t, d = meta.layer_shape(layer)
            if light:  # cache_layout.md §2.6: the prefix and one gap token
                t = p + 1
            elif grid2:
                (h, w) = meta.layer_shapes[layer][0] if layer in meta.layer_shapes else meta.layout.grid
                t = p + (h // 2) * (w // 2)
            for n, v, cs in splits:
                out += n * v * t * d * itemsize
                out += n * v * t * token  # one float32 scale per (sample, view, token)
                out += -(-n // max(1, cs)) * d * chunk_dim  # one float32 scale per (chunk, channel)
        return out

    grids = [meta.layer_shapes[ly][0] if ly in meta.layer_shapes else meta.layout.grid for ly in meta.layers]
    poolable = all(h % 2 == 0 and w % 2 == 0 for h, w in grids)
    return [
        SizeOption("float32", total(4), "--dtype float32"),
        SizeOption("float16", total(2), "--dtype float16 (default)"),
        SizeOption("bfloat16", total(2), "--dtype bfloat16"),
        SizeOption("int8-channel", total(1, chunk_dim=4), "--quantize int8 (= int8-channel)"),
        SizeOption("int8-token", total(1, token=4), "--quantize int8-token"),
        SizeOption("fp8-e4m3", total(1, chunk_dim=4), "--quantize fp8"),
        *([SizeOption("2x2-pooled", total(2, grid2=True), "--pool-patches 2 (float16)")] if poolable else []),
        *([SizeOption("light", total(2, light=True), "--keep cls,gap,registers (float16)")]
          if meta.layout.keep is None else []),
    ]


def format_size_table(options: Sequence[SizeOption], *, current: str | None = None) -> str:
    """``size  float16  1.2 GB  1.00x  --dtype float16 (default)`` lines, relative to float16."""

    ref = next((o.bytes for o in options if o.name == "float16"), 0) or 1
    lines = ["sizes       each storage option for these splits and layers (token arrays and scales):"]
    for o in options:
        mark = "  <- this store" if o.name == current else ""
        lines.append(f"  {o.name:<13} {human_bytes(o.bytes):>10}  {o.bytes / ref:5.2f}x fp16  {o.how}{mark}")
    return "\n".join(lines)
