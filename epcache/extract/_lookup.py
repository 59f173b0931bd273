"""Finding a stored sample's image again by its id (``epcache attention``) for any source kind.

ImageFolder and CSV ids are file paths under the data root. WebDataset and HF ids are listed
again from the split source and options the store recorded (one scan of the shard headers, or
of the label column), then read at their recorded offset or row.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from epcache.errors import ConfigError
from epcache.extract._sources import SourceOptions, scan_splits

__all__ = ["image_fetcher"]


def image_fetcher(meta: Any, split: str, data: Path | str) -> Callable[[str], bytes] | None:
    """id -> image bytes for a WebDataset or HF store; None for file-based stores (ids are paths).

    Raises:
        ConfigError: the store does not record the split's source, or an id is not in the data.
    """
    dataset = meta.dataset
    if dataset.get("kind") not in ("webdataset", "hf"):
        return None
    sources = meta.extra.get("split_sources") or {}
    if split not in sources:
        raise ConfigError(f"the store does not record where split {split!r} came from; its images cannot be found")
    options = SourceOptions(
        wds_image_key=str(dataset.get("image_key", SourceOptions.wds_image_key)),
        wds_label_key=str(dataset.get("label_key", SourceOptions.wds_label_key)),
        image_column=str(dataset.get("image_column", SourceOptions.image_column)),
        label_column=str(dataset.get("label_column", SourceOptions.label_column)),
        on_bad_image="skip",  # samples skipped at extraction are not looked up
        allow_outside_paths=meta.extra.get("allow_outside_paths") is True,  # as the extraction read them
    )
    src = scan_splits(data, {split: str(sources[split])}, options=options)[split]
    index = {sid: i for i, sid in enumerate(src.ids)}

    def fetch(sample_id: str) -> bytes:
        if sample_id not in index:
            raise ConfigError(f"sample {sample_id!r} is not in {data} (split source {sources[split]!r})")
        data_bytes: bytes = src.reader.read(index[sample_id])
        return data_bytes

    return fetch
