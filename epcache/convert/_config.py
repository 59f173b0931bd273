"""What a conversion is asked to do (``ConvertConfig``) and what it did (``ConvertResult``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from epcache._docs import doc, document_fields
from epcache._text import human_bytes
from epcache.errors import ConfigError
from epcache.store.layout.light import parse_keep
from epcache.store.layout.quant import resolve_quantization

__all__ = ["ConvertConfig", "ConvertResult"]

_DTYPES = ("float16", "bfloat16", "float32")


@document_fields
@dataclass(frozen=True)
class ConvertConfig:
    """One conversion: the complete store ``src`` read chunk by chunk into a new store ``dst``.

    Every option left at its default keeps what the source has, so ``ConvertConfig(src, dst)`` is a
    verified copy (e.g. into the other backend with ``format``).
    """

    src: Path | str = doc(doc="the complete source store (zarr directory, .h5 file or URL)")
    dst: Path | str = doc(doc="the store to write; never the source")
    pool_patches: int = doc(1, doc="average KxK windows of the patch grid, prefix kept (cache_layout §2.4); 1: off")
    keep: str | None = doc(None, doc="light copy: cls,gap,registers or cls,gap, the whole grid averaged into one "
                           "gap token (cache_layout §2.6); None: every token")
    layers: str | None = doc(None, doc="stored layers to keep: all, last, -4:, 0,5,11; None: every stored layer")
    dtype: Literal["float16", "bfloat16", "float32"] | None = doc(None, doc="dtype of the copy; None: the source's")
    quantize: str | None = doc(
        None, doc="int8 (= int8-channel), int8-token, fp8 or none (plain floats); None: the source's scheme"
    )
    splits: tuple[str, ...] | None = doc(None, doc="splits to copy; None: every split")
    format: Literal["zarr", "h5"] | None = doc(None, doc="None: from the suffix of `dst`")
    chunk_samples: int | None = doc(None, doc="samples per chunk of the copy; None: a few MB per chunk")
    shard_samples: int | None = doc(None, doc="samples per zarr shard of the copy; None: automatic")
    compressor: str | None = doc(None, doc="'zstd[:level]', 'blosc[:level]' (zarr), 'gzip', 'lzf' (h5) or None")
    overwrite: bool = doc(False, doc="replace a store at `dst` (kept until the copy is complete)")
    break_lock: bool = doc(False, doc="remove a stale writer lock on `dst` (another host's, or a killed "
                           "extraction's); a killed conversion's lock on this host is taken over without it")
    record_paths: bool = doc(
        False, doc="record the source's location and the data root as absolute paths; off: relative, or left out"
    )

    def __post_init__(self) -> None:
        if self.pool_patches < 1:
            raise ConfigError(f"--pool-patches must be >= 1 (1 = no pooling), got {self.pool_patches}")
        keep = parse_keep(self.keep)
        object.__setattr__(self, "keep", None if keep is None else ",".join(keep))  # "gap,cls" -> "cls,gap"
        if keep is not None and self.pool_patches > 1:
            raise ConfigError("--keep averages the whole patch grid into one token; drop --pool-patches")
        if self.dtype is not None and self.dtype not in _DTYPES:
            raise ConfigError(f"dtype {self.dtype!r} is not one of {', '.join(_DTYPES)}")
        if self.quantize is not None:
            resolve_quantization(self.quantize)  # an unknown scheme fails here, naming the accepted ones
        if self.format not in (None, "zarr", "h5"):
            raise ConfigError(f"format {self.format!r} must be zarr or h5")
        for name, value in (("chunk_samples", self.chunk_samples), ("shard_samples", self.shard_samples)):
            if value is not None and value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1 (samples per file), got {value}")
        if self.splits is not None and not self.splits:
            raise ConfigError("--splits names no split; leave it out to copy every split")


@dataclass(frozen=True)
class ConvertResult:
    """What a call to ``convert`` did."""

    src: str
    dst: str
    provenance: str  # the new store's key
    source_provenance: str
    ops: Mapping[str, Any]  # what was changed: recorded as derived_from.ops
    samples: Mapping[str, int] = field(default_factory=dict)
    bytes_read: int = 0  # token bytes read from the source (layers kept only)
    bytes_written: int = 0
    seconds: float = 0.0

    def format_text(self) -> str:
        ratio = self.bytes_written / self.bytes_read if self.bytes_read else 0.0
        ops = ", ".join(f"{k}={v}" for k, v in self.ops.items()) or "copy"
        return "\n".join(
            [
                f"converted {self.src} -> {self.dst} ({ops}): {sum(self.samples.values())} samples in "
                f"{self.seconds:.1f} s",
                f"tokens {human_bytes(self.bytes_read)} read -> {human_bytes(self.bytes_written)} written "
                f"({ratio:.2f}x)",
                f"provenance {self.provenance} (derived from {self.source_provenance})",
            ]
        )
