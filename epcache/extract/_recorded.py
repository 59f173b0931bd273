"""What a store recorded about where its images came from: the data root and how samples were read.

Shared by ``verify --repair`` (which re-extracts) and ``epcache attention`` (which shows images).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["is_location", "recorded_data_root", "recorded_source_options"]


def recorded_data_root(extra: Mapping[str, Any]) -> Path | str | None:
    """The data root a store recorded at extraction (``extra.data_root``), if it is a directory here.

    Stores move between machines; a recorded root that does not exist here is no default at all,
    so callers fall back to asking for ``--data``. An ``hf:`` root is returned as its string when
    its directory exists, an fsspec URL (WebDataset shards) as it is.
    """
    text = extra.get("data_root")
    if not isinstance(text, str) or not text:
        return None
    if "://" in text and not text.startswith("file://"):
        return text
    path = Path(text.removeprefix("hf:"))
    if not path.is_dir():
        return None
    return text if text.startswith("hf:") else path


def is_location(text: str) -> bool:
    """An ``hf:`` dataset or an fsspec URL: kept as a string (a Path would fold ``s3://`` to ``s3:/``)."""
    return text.startswith("hf:") or ("://" in text and not text.startswith("file://"))


def recorded_source_options(dataset: Mapping[str, Any], pre: Mapping[str, Any]) -> dict[str, Any]:
    """How the store's samples were read (WebDataset keys, HF columns, GPU decoding), as recorded."""
    keys = ("image_key", "label_key", "image_column", "label_column")
    fields = ("wds_image_key", "wds_label_key", "image_column", "label_column")
    out = {f: str(dataset[k]) for k, f in zip(keys, fields, strict=True) if isinstance(dataset.get(k), str)}
    if pre.get("decode"):
        out["decode"] = "gpu"
    return out
