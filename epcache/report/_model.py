"""The backbone of a run as its store recorded it, for figure titles and report headers.

Results rows carry only the timm name; a demo's 4-block, patch-8 ViT at 64 px with random
weights is not ``vit_tiny_patch16_224``, so titles read the store's metadata when it is reachable.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from epcache.errors import EpcacheError
from epcache.store import open_store

__all__ = ["model_title"]


def model_title(row: Mapping[str, Any]) -> str:
    """``vit_tiny_patch16_224 (depth=4, patch_size=8, 64 px), random init``, or the bare name from the row."""

    store = row.get("store") or {}
    name = str(store.get("backbone", "?"))
    try:
        with open_store(str(store.get("path", ""))) as st:
            bb, pre = st.meta.backbone, st.meta.preprocessing
    except (EpcacheError, OSError, ValueError):
        return name  # the store moved: the row's name is all that is known
    details = [f"{k}={v}" for k, v in sorted(dict(pre.get("model_kwargs") or {}).items()) if k != "img_size"]
    size = pre.get("img_size") or (pre.get("data_config") or {}).get("input_size", [None])[-1]
    if size:
        details.append(f"{size} px")
    if bb.source == "random-init":
        weights = "random init"
    elif bb.weights_file:
        weights = f"weights {Path(bb.weights_file).name}"
    else:
        weights = f"{bb.source} weights"
    inner = ", ".join(details)
    return f"{bb.name} ({inner}), {weights}" if details else f"{bb.name}, {weights}"
