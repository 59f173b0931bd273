"""Dense labels: the ``dense`` key of the root document and the fingerprint of mask files (cache_layout.md §3.6).

A store with per-pixel masks records, once for the store, what the mask values mean (class names,
ignore index, dtype, pixel size) and, per split, a sha256 over its mask files. The key sits at the
top level of the document, so it is inside the provenance key (§2.3) and an edited mask source can
never resume into an old store; stores without masks have no such key and keep their documents.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from epcache.errors import CorruptStoreError

__all__ = ["DEFAULT_IGNORE_INDEX", "DenseInfo", "dense_document", "mask_dtype", "masks_fingerprint", "store_level"]

DEFAULT_IGNORE_INDEX = 255
MASK_DTYPES = ("uint8", "uint16")


@dataclass(frozen=True)
class DenseInfo:
    """What a mask value means: ``classes[v]`` for a class index ``v``, ``ignore_index`` for unlabelled pixels."""

    classes: tuple[str, ...]
    ignore_index: int
    dtype: str  # "uint8" or "uint16"
    size: tuple[int, int]  # (H, W): the model input, i.e. the token grid times the patch size

    @classmethod
    def from_document(cls, doc: Mapping[str, Any], location: str = "store") -> DenseInfo:
        """Parse the ``dense`` key; a hand-edited one fails here rather than mislabelling pixels."""
        try:
            info = cls(
                classes=tuple(str(c) for c in doc["classes"]),
                ignore_index=int(doc["ignore_index"]),
                dtype=str(doc["dtype"]),
                size=(int(doc["size"][0]), int(doc["size"][1])),
            )
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise CorruptStoreError(
                f"{location}: metadata key 'dense' is malformed ({e}); re-extract the store"
            ) from None
        if info.dtype not in MASK_DTYPES or min(info.size) < 1 or not info.classes:
            raise CorruptStoreError(f"{location}: metadata key 'dense' holds {dict(doc)}; re-extract the store")
        return info


def mask_dtype(num_classes: int, ignore_index: int) -> str:
    """uint8 while every class index and the ignore index fit in a byte, else uint16."""
    return "uint8" if max(num_classes - 1, ignore_index) <= 255 else "uint16"


def dense_document(info: DenseInfo) -> dict[str, Any]:
    """The ``dense`` key of a new store; ``masks_sha256`` is filled in as each split is added."""
    return {
        "classes": list(info.classes),
        "ignore_index": info.ignore_index,
        "dtype": info.dtype,
        "size": list(info.size),
        "masks_sha256": {},
    }


def masks_fingerprint(file_digests: Iterable[str]) -> str:
    """sha256 over each mask file's sha256 hex digest and a newline, in dataset order (cache_layout.md §3.6)."""
    h = hashlib.sha256()
    for d in file_digests:
        h.update(f"{d}\n".encode("ascii"))
    return h.hexdigest()


def store_level(dense: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The ``dense`` key without its per-split fingerprints: what a split added later must agree with."""
    if dense is None:
        return None
    return {k: v for k, v in dense.items() if k != "masks_sha256"}
