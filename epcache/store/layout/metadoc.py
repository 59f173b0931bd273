"""The root JSON document of cache_layout.md §2 as bytes and versions, before any parsing.

Split from ``layout/meta.py`` at the point where the parsed dataclasses begin: this module is what a
reader needs to decide whether a document may be parsed at all (its format name and version,
its size bound, that it is a JSON object) and the ``TypedDict`` shapes of the JSON exactly as
written. ``layout/meta.py`` holds the dataclasses that parse and write it; ``StoreMeta.from_json`` calls
``check_version`` before it reads any other field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypedDict

from epcache.errors import CorruptStoreError, LayoutVersionError

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MAX_META_BYTES",
    "READ_VERSIONS",
    "BackboneMetaJSON",
    "SplitMetaJSON",
    "StoreMetaJSON",
    "TokenLayoutJSON",
    "check_version",
    "document_version",
    "parse_meta_json",
]

FORMAT_NAME = "epcache-store"
FORMAT_VERSION = "1.1"  # what this epcache writes (cache_layout.md §5: 1.1 adds arrays and attributes to 1.0)
READ_VERSIONS = ("1.0", "1.1", "1.2")  # what it reads; 1.0 is stored as the integer 1
MAX_META_BYTES = 64 * 1024 * 1024  # refuse to parse metadata larger than this (hostile or corrupt)


class BackboneMetaJSON(TypedDict):
    name: str
    source: str
    timm_version: str
    weights_sha256: str
    weights_file: str | None
    num_blocks: int


class TokenLayoutJSON(TypedDict):
    num_prefix: int
    cls_index: int | None
    num_registers: int
    grid: list[int]


class SplitMetaJSON(TypedDict):
    num_samples: int
    views: int
    classes: list[str]
    chunk_samples: int
    block_samples: int
    permutation_seed: int
    ids_sha256: str
    labels_sha256: str


class StoreMetaJSON(TypedDict):
    format: str
    format_version: int | str
    backbone: BackboneMetaJSON
    layout: TokenLayoutJSON
    layers: list[int]
    final_norm: bool
    dtype: str
    storage_dtype: str
    dim: int
    num_tokens: int
    preprocessing: dict[str, Any]
    views: dict[str, Any]
    dataset: dict[str, Any]
    extra: dict[str, Any]
    splits: dict[str, SplitMetaJSON]
    provenance: str


def document_version(data: Mapping[str, Any]) -> str:
    """"1.0" or "1.1" from a root document whose version was checked by ``check_version``."""
    v = data.get("format_version")
    return "1.0" if (v == 1 and not isinstance(v, bool)) or v == "1.0" else str(v)


def parse_meta_json(raw: str | bytes | Mapping[str, Any], where: str) -> dict[str, Any]:
    """Decode the root document with a size bound; ``where`` names the store in messages."""
    if isinstance(raw, Mapping):
        return dict(raw)
    if len(raw) > MAX_META_BYTES:
        raise CorruptStoreError(f"{where}: metadata is {len(raw)} bytes (limit {MAX_META_BYTES}); refusing to parse")
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise CorruptStoreError(f"{where}: metadata is not valid JSON ({e}); re-extract the store") from None
    if not isinstance(data, dict):
        raise CorruptStoreError(f"{where}: metadata is not a JSON object; re-extract the store")
    return data


def check_version(data: Mapping[str, Any]) -> None:
    """Refuse a document that is not an epcache store, or of a format version this epcache cannot read."""
    if data.get("format") != FORMAT_NAME:
        raise CorruptStoreError(f"metadata 'format' is {data.get('format')!r}, expected {FORMAT_NAME!r}")
    version = data.get("format_version")
    known = (version == 1 and type(version) is int) or version in READ_VERSIONS
    if not known:
        raise LayoutVersionError(
            f"store has format version {version!r}, this epcache reads versions 1.0 (stored as 1), 1.1 and 1.2; "
            "upgrade epcache or re-extract the store"
        )
