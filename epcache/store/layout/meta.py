"""Typed store metadata: the parsed dataclasses of the JSON document of cache_layout.md §2.

Each on-disk document has two types: a ``TypedDict`` that is the JSON exactly as written (in
``layout/metadoc.py``, with the format constants and the bounded decode) and a frozen dataclass
holding the parsed value (here). ``StoreMeta.from_json`` checks the format version before it
reads anything else, so an unknown future layout fails with a clear message instead of a
``KeyError`` deep inside a reader.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from epcache.errors import CorruptStoreError
from epcache.store.layout.metadoc import FORMAT_NAME, FORMAT_VERSION, SplitMetaJSON, check_version
from epcache.store.layout.quant import QUANT_FORMAT_VERSION, QUANTIZATIONS, parse_quantization

__all__ = [
    "QUANT_FORMAT_VERSION",
    "STORE_DTYPES",
    "BackboneMeta",
    "Dtype",
    "SplitMeta",
    "SplitSpec",
    "StoreMeta",
    "TokenLayout",
    "writer_version",
]

Dtype = Literal["float16", "bfloat16", "float32"]
STORE_DTYPES: dict[str, str] = {  # logical dtype -> dtype of the bytes on disk (cache_layout.md §3)
    "float16": "float16",
    "bfloat16": "uint16",  # zarr and HDF5 have no bfloat16: the raw bits, read back as bfloat16
    "float32": "float32",
}


@dataclass(frozen=True)
class BackboneMeta:
    """Which network produced the tokens, and from which exact weights."""

    name: str  # full timm name with tag, e.g. "vit_base_patch16_224.mae"
    source: str  # "timm-hf-cache" | "checkpoint" | "random-init"
    timm_version: str
    weights_sha256: str  # sha256 of the weights file; random-init: of the initialised tensors (cache_layout.md §2.1)
    weights_file: str | None = None  # basename only: paths and credentials never enter metadata
    num_blocks: int = 0  # blocks in the whole model, so readers can tell "layer 11 of 12"


@dataclass(frozen=True)
class TokenLayout:
    """Where CLS, registers and patches sit along the token axis T."""

    num_prefix: int  # prefix tokens (CLS + registers) before the patch grid; 0 for convnets
    cls_index: int | None  # position of CLS among the prefix tokens, None if the model has none
    num_registers: int
    grid: tuple[int, int]  # patch grid (h, w) as stored; patches follow the prefix row-major
    # the stored grid averages pool_patches x pool_patches windows of the model's grid (--pool-patches);
    # written to JSON only when > 1, so unpooled stores keep the document (and provenance) they had
    pool_patches: int = 1
    # a light store (--keep, cache_layout.md §2.6): the prefix tokens kept ("cls", "gap", "registers") and the
    # whole grid averaged into one token; written to JSON only when set, like pool_patches
    keep: tuple[str, ...] | None = None

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        return self.num_prefix + self.num_patches

    def register_slice(self) -> slice:
        """Token positions of the register tokens (prefix tokens other than CLS)."""
        if self.num_registers == 0:
            return slice(0, 0)
        start = 0 if self.cls_index != 0 else 1
        return slice(start, start + self.num_registers)


@dataclass(frozen=True)
class StoreMeta:
    """Everything that describes a store's token arrays, independent of its splits."""

    backbone: BackboneMeta
    layout: TokenLayout
    layers: tuple[int, ...]  # absolute block indices, sorted
    final_norm: bool  # True when the model's final norm was applied to every stored layer
    dtype: Dtype  # logical dtype readers get back
    dim: int  # D
    num_tokens: int  # T = num_prefix + h * w
    preprocessing: dict[str, Any] = field(default_factory=dict)  # resolved timm data config etc.
    views: dict[str, Any] = field(default_factory=dict)  # {"augmented": K, "seed": s, "recipe": {...}}
    dataset: dict[str, Any] = field(default_factory=dict)  # {"kind": "imagefolder", "name": ...}
    extra: dict[str, Any] = field(default_factory=dict)  # free JSON (skipped images, notes)
    # per-layer (grid, dim) of layers whose shape differs from the top-level layout.grid/dim (1.1: a
    # convnet's stages in one store); empty when every layer has the top-level shape
    layer_shapes: dict[int, tuple[tuple[int, int], int]] = field(default_factory=dict)
    # a store made by `epcache convert` from another: {"provenance": source key, "ops": {...}};
    # inside the provenance key, so a derived store never shares its source's key
    derived_from: dict[str, Any] | None = None
    # None: tokens stored in `dtype`; else the scheme of cache_layout.md §3.5 ("int8-channel",
    # "int8-token", "fp8-e4m3"): codes in the token arrays, scales beside them, reads give `dtype`
    quantization: str | None = None
    # a store with taps (cache_layout.md §2.7): {tap name: {"dim": D, "keep": [...] or None}}, each a nested
    # store under taps/<name>/; a tap store's own `tap` says which module it holds. Both inside the key.
    taps: dict[str, Any] | None = None
    tap: dict[str, Any] | None = None
    # per-pixel labels beside the tokens (cache_layout.md §3.6): classes, ignore_index, dtype, size,
    # masks_sha256 per split; absent from stores without masks, so their documents stay as they were
    dense: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.dtype not in STORE_DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {sorted(STORE_DTYPES)}")
        if self.quantization is not None and self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization {self.quantization!r} is not one of {sorted(QUANTIZATIONS)}")
        if self.num_tokens != self.layout.num_tokens:
            raise ValueError(
                f"num_tokens={self.num_tokens} disagrees with the token layout "
                f"({self.layout.num_prefix} prefix + {self.layout.grid[0]}x{self.layout.grid[1]} patches)"
            )
        if self.layout.pool_patches < 1:
            raise ValueError(f"layout.pool_patches must be >= 1, got {self.layout.pool_patches}")
        if list(self.layers) != sorted(set(self.layers)) or not self.layers:
            raise ValueError(f"layers must be a non-empty sorted list of distinct indices, got {self.layers}")
        for layer, (grid, dim) in self.layer_shapes.items():
            if layer not in self.layers or dim < 1 or len(grid) != 2 or min(grid) < 1:
                raise ValueError(f"layer_shapes entry {layer}: grid {grid}, dim {dim} is not a stored layer's shape")

    def layer_shape(self, layer: int) -> tuple[int, int]:
        """(T, D) of one layer's tokens: its own shape where ``layer_shapes`` lists it, else the top level."""
        if layer in self.layer_shapes:
            (h, w), dim = self.layer_shapes[layer]
            return self.layout.num_prefix + h * w, dim
        return self.num_tokens, self.dim

    def for_layer(self, layer: int) -> StoreMeta:
        """This metadata as seen by a reader of one layer: its grid, T and D at the top level."""
        if layer not in self.layer_shapes:
            return self
        (h, w), dim = self.layer_shapes[layer]
        layout = dataclasses.replace(self.layout, grid=(h, w))
        return dataclasses.replace(self, layout=layout, dim=dim, num_tokens=layout.num_tokens, layer_shapes={})

    @property
    def storage_dtype(self) -> str:
        """dtype of the token arrays' bytes: the codes' dtype when quantised."""
        if self.quantization is not None:
            return QUANTIZATIONS[self.quantization].code_dtype
        return STORE_DTYPES[self.dtype]

    @property
    def value_storage_dtype(self) -> str:
        """dtype of the bytes of unquantised float arrays (the pooled output, §3.4): ``dtype``'s storage."""
        return STORE_DTYPES[self.dtype]

    def to_json(self, version: str = FORMAT_VERSION) -> dict[str, Any]:
        """The store-level fields of cache_layout.md §2 (without splits and provenance), every key written.

        ``version`` "1.0" writes the integer 1, as 1.0 writers did, so that appending to a 1.0
        store keeps its document (and provenance key) a 1.0 document.
        """
        return {
            "format": FORMAT_NAME,
            "format_version": 1 if version == "1.0" else version,
            "backbone": asdict(self.backbone),
            "layout": _layout_json(self.layout),
            "layers": list(self.layers),
            "final_norm": self.final_norm,
            "dtype": self.dtype,
            "storage_dtype": self.storage_dtype,
            "dim": self.dim,
            "num_tokens": self.num_tokens,
            "preprocessing": _jsonable(self.preprocessing),
            "views": _jsonable(self.views),
            "dataset": _jsonable(self.dataset),
            "extra": _jsonable(self.extra),
            **(
                {
                    "layer_shapes": {
                        str(layer): {"grid": list(grid), "dim": dim, "num_tokens": self.layer_shape(layer)[0]}
                        for layer, (grid, dim) in sorted(self.layer_shapes.items())
                    }
                }
                if self.layer_shapes
                else {}
            ),
            **({"derived_from": _jsonable(self.derived_from)} if self.derived_from is not None else {}),
            **({"quantization": self.quantization} if self.quantization is not None else {}),
            **({"taps": _jsonable(self.taps)} if self.taps is not None else {}),
            **({"tap": _jsonable(self.tap)} if self.tap is not None else {}),
            **({"dense": _jsonable(self.dense)} if self.dense is not None else {}),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StoreMeta:
        """Parse the root document; the version is checked before any other field."""
        check_version(data)
        try:
            bb = data["backbone"]
            lay = data["layout"]
            meta = cls(
                backbone=BackboneMeta(
                    name=str(bb["name"]),
                    source=str(bb["source"]),
                    timm_version=str(bb["timm_version"]),
                    weights_sha256=str(bb["weights_sha256"]),
                    weights_file=bb.get("weights_file"),
                    num_blocks=int(bb.get("num_blocks", 0)),
                ),
                layout=TokenLayout(
                    num_prefix=int(lay["num_prefix"]),
                    cls_index=None if lay["cls_index"] is None else int(lay["cls_index"]),
                    num_registers=int(lay["num_registers"]),
                    grid=(int(lay["grid"][0]), int(lay["grid"][1])),
                    pool_patches=int(lay.get("pool_patches", 1)),
                    keep=tuple(str(k) for k in lay["keep"]) if lay.get("keep") is not None else None,
                ),
                layers=tuple(int(i) for i in data["layers"]),
                final_norm=bool(data["final_norm"]),
                dtype=data["dtype"],
                dim=int(data["dim"]),
                num_tokens=int(data["num_tokens"]),
                preprocessing=dict(data.get("preprocessing", {})),
                views=dict(data.get("views", {})),
                dataset=dict(data.get("dataset", {})),
                extra=dict(data.get("extra", {})),
                layer_shapes=_parse_layer_shapes(data.get("layer_shapes", {})),
                derived_from=dict(data["derived_from"]) if data.get("derived_from") is not None else None,
                quantization=parse_quantization(data),
                taps=dict(data["taps"]) if data.get("taps") is not None else None,
                tap=dict(data["tap"]) if data.get("tap") is not None else None,
                dense=dict(data["dense"]) if data.get("dense") is not None else None,
            )
        except KeyError as e:
            raise CorruptStoreError(
                f"store metadata is missing the key {e.args[0]!r}; it was hand-edited or written by a "
                "broken tool. Re-extract the store (cache_layout.md §2 lists every key)"
            ) from None
        except (TypeError, ValueError, IndexError) as e:
            raise CorruptStoreError(f"store metadata is malformed ({e}); re-extract the store") from None
        for key, v in dict(data.get("layer_shapes", {})).items():
            if v.get("num_tokens", meta.layer_shape(int(key))[0]) != meta.layer_shape(int(key))[0]:
                raise CorruptStoreError(
                    f"metadata layer_shapes[{key}] says num_tokens {v['num_tokens']}, its grid and the prefix give "
                    f"{meta.layer_shape(int(key))[0]}; re-extract the store"
                )
        if data.get("storage_dtype", meta.storage_dtype) != meta.storage_dtype:
            raise CorruptStoreError(
                f"metadata says dtype {meta.dtype} but storage_dtype {data['storage_dtype']}; re-extract the store"
            )
        return meta


@dataclass(frozen=True)
class SplitSpec:
    """What the extractor declares when it adds a split; arrays are in DATASET order."""

    name: str
    labels: np.ndarray  # int64 [N]
    ids: Sequence[str]  # sample ids: path relative to the data root
    classes: Sequence[str]
    views: int = 1  # V: 1 (eval view) + K augmented views
    permutation_seed: int = 0
    masks_sha256: str | None = None  # fingerprint of the split's mask files, in a store with masks (§3.6)


@dataclass(frozen=True)
class SplitMeta:
    """A split as recorded in the store."""

    name: str
    num_samples: int
    views: int
    classes: tuple[str, ...]
    chunk_samples: int  # samples per chunk: the read unit
    block_samples: int  # samples per write unit (a zarr shard, else one chunk)
    permutation_seed: int
    ids_sha256: str  # fingerprints of ids and labels in dataset order (part of the provenance)
    labels_sha256: str

    @property
    def num_chunks(self) -> int:
        return -(-self.num_samples // self.chunk_samples)

    @property
    def num_blocks(self) -> int:
        return -(-self.num_samples // self.block_samples)

    def to_json(self) -> SplitMetaJSON:
        return {
            "num_samples": self.num_samples,
            "views": self.views,
            "classes": list(self.classes),
            "chunk_samples": self.chunk_samples,
            "block_samples": self.block_samples,
            "permutation_seed": self.permutation_seed,
            "ids_sha256": self.ids_sha256,
            "labels_sha256": self.labels_sha256,
        }

    @classmethod
    def from_json(cls, name: str, data: Mapping[str, Any]) -> SplitMeta:
        try:
            sm = cls(
                name=name,
                num_samples=int(data["num_samples"]),
                views=int(data["views"]),
                classes=tuple(str(c) for c in data["classes"]),
                chunk_samples=int(data["chunk_samples"]),
                block_samples=int(data["block_samples"]),
                permutation_seed=int(data["permutation_seed"]),
                ids_sha256=str(data["ids_sha256"]),
                labels_sha256=str(data["labels_sha256"]),
            )
        except KeyError as e:
            raise CorruptStoreError(
                f"metadata of split {name!r} is missing the key {e.args[0]!r}; re-extract the store"
            ) from None
        except (TypeError, ValueError) as e:
            raise CorruptStoreError(f"metadata of split {name!r} is malformed ({e}); re-extract") from None
        if sm.num_samples < 0 or sm.views < 1 or sm.chunk_samples < 1 or sm.block_samples % sm.chunk_samples:
            raise CorruptStoreError(f"metadata of split {name!r} has impossible sizes: {data}")
        return sm


def writer_version(meta: StoreMeta) -> str:
    """The format version a new store with this metadata is written as (1.2 only when quantised)."""
    return QUANT_FORMAT_VERSION if meta.quantization is not None else FORMAT_VERSION


def _parse_layer_shapes(data: Any) -> dict[int, tuple[tuple[int, int], int]]:
    """``{"<L>": {"grid": [h, w], "dim": D, "num_tokens": T}}`` -> ``{L: ((h, w), D)}``; T is checked."""
    if not isinstance(data, Mapping):
        raise TypeError("layer_shapes must be an object")
    out: dict[int, tuple[tuple[int, int], int]] = {}
    for key, v in data.items():
        grid = (int(v["grid"][0]), int(v["grid"][1]))
        out[int(key)] = (grid, int(v["dim"]))
        if "num_tokens" in v and not isinstance(v["num_tokens"], int):
            raise TypeError(f"layer_shapes[{key}].num_tokens must be an integer")
    return out


def _layout_json(layout: TokenLayout) -> dict[str, Any]:
    """``layout`` of §2.1; ``pool_patches`` and ``keep`` only when set (older documents lack them)."""
    doc = {**asdict(layout), "grid": list(layout.grid)}
    if layout.pool_patches == 1:
        del doc["pool_patches"]
    if layout.keep is None:
        del doc["keep"]
    else:
        doc["keep"] = list(layout.keep)
    return doc


def _jsonable(obj: Any) -> Any:
    """Round-trip through JSON so tuples become lists and non-JSON values fail at write time."""
    return json.loads(json.dumps(obj))
