"""Shared fixtures of the pooling and convert tests: one tiny ViT with a 4x4 patch grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from extract_helpers import make_imagefolder, tiny_config

from epcache.extract import ExtractConfig
from epcache.store import open_store

GRID4_KWARGS: dict[str, Any] = {"depth": 2, "img_size": 32, "patch_size": 8}  # 4x4 patches + CLS

__all__ = ["GRID4_KWARGS", "all_bytes", "grid4_config", "make_imagefolder", "store_files"]


def grid4_config(data: Path, out: Path, **overrides: Any) -> ExtractConfig:
    """``tiny_config`` with a 4x4 patch grid, so pooling by 2 leaves a 2x2 grid."""
    return tiny_config(data, out, **{"model_kwargs": GRID4_KWARGS, **overrides})


def all_bytes(path: Path | str, layers: tuple[int, ...] | None = None) -> dict[tuple[str, str], bytes]:
    """Token bytes per (split, layer) plus labels, ids and order: what two stores must share."""
    out: dict[tuple[str, str], bytes] = {}
    with open_store(path) as s:
        for split in s.splits:
            out[(split, "labels")] = s.read_labels(split).tobytes()
            out[(split, "order")] = s.read_order(split).tobytes()
            out[(split, "ids")] = "\n".join(s.read_ids(split)).encode()
            for layer in layers or s.meta.layers:
                out[(split, str(layer))] = np.ascontiguousarray(s.read_tokens(split, layer)).tobytes()
    return out


def store_files(root: Path) -> list[str]:
    """Every name directly under ``root`` (hidden ones included): what a failed run left behind."""
    return sorted(p.name for p in root.iterdir())
