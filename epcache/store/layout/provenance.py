"""The provenance key and the split fingerprints (cache_layout.md §2.2, §2.3).

The key is the sha256 of the stored root document in one stated JSON encoding, so anyone can
recompute it from the document alone (tests/interop does, importing no epcache).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from epcache.store.layout.meta import SplitMeta, SplitSpec, StoreMeta
from epcache.store.layout.metadoc import FORMAT_VERSION

__all__ = [
    "canonical_json",
    "class_map_fingerprint",
    "compute_provenance",
    "provenance_of_document",
    "split_fingerprint",
]


def split_fingerprint(spec: SplitSpec) -> tuple[str, str]:
    """sha256 of the ids and of the labels, both in dataset order."""
    ids = hashlib.sha256("\n".join(spec.ids).encode("utf-8")).hexdigest()
    labels = hashlib.sha256(np.ascontiguousarray(spec.labels, dtype="<i8").tobytes()).hexdigest()
    return ids, labels


def class_map_fingerprint(classes: Sequence[str]) -> str:
    """sha256 of the ordered class list, each name with its index: what a stored label MEANS.

    Two splits whose labels index different lists (another order, a class missing) give the same
    integers for different classes and a silently wrong accuracy; equal fingerprints rule that out.
    Derived from the stored class list, so every existing store has one without a format change.
    """
    text = json.dumps([[i, str(name)] for i, name in enumerate(classes)], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def compute_provenance(meta: StoreMeta, splits: Mapping[str, SplitMeta], version: str = FORMAT_VERSION) -> str:
    """Hash of everything that determines the stored bytes (cache_layout.md §2.3).

    Chunk and shard sizes and the backend are left out: they change the files, not the values,
    so two stores with the same provenance hold identical tokens for identical ids. This is the
    key of the complete document a writer of ``version`` stores for ``meta`` and ``splits``.
    """
    doc = meta.to_json(version)
    doc["splits"] = {name: s.to_json() for name, s in splits.items()}
    return provenance_of_document(doc)


def provenance_of_document(doc: Mapping[str, Any]) -> str:
    """The provenance key of a root document as stored (cache_layout.md §2.3), computed exactly as an
    outsider would: drop ``extra``, ``provenance``, ``backbone.source`` and ``backbone.weights_file``,
    reduce each split to its six content keys, then sha256 of the canonical JSON encoding.

    Nothing is filled in or normalised: the key is over the document as it is stored, so any edit
    of a covered key changes it.
    """
    red = {k: v for k, v in doc.items() if k not in ("extra", "provenance")}
    bb = red.get("backbone")
    if isinstance(bb, Mapping):
        red["backbone"] = {k: v for k, v in bb.items() if k not in ("source", "weights_file")}
    splits = red.get("splits")
    if isinstance(splits, Mapping):
        red["splits"] = {
            name: {k: s[k] for k in _PROVENANCE_SPLIT_KEYS if k in s} if isinstance(s, Mapping) else s
            for name, s in splits.items()
        }
    return hashlib.sha256(canonical_json(red).encode("ascii")).hexdigest()


_PROVENANCE_SPLIT_KEYS = ("num_samples", "views", "classes", "permutation_seed", "ids_sha256", "labels_sha256")


def canonical_json(doc: Any) -> str:
    """The encoding hashed for the provenance key (cache_layout.md §2.3): keys sorted at every level,
    no whitespace (separators ``,`` and ``:``), non-ASCII escaped as ``\\uXXXX`` (ensure_ascii),
    floats as Python's shortest round-trip ``repr`` (``0.485``, ``1e-05``, ``224.0``), no NaN/inf."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
