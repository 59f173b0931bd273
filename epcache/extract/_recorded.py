"""What a store records about where its images (or its source store) came from, and how to find them again.

Stores are shared across a lab, so by default their metadata carries no absolute host path: a
local location is recorded relative to the store's parent directory when it is reachable from
there with at most ``MAX_CLIMB`` ``..`` steps (a data tree and a store tree under one lab root),
and is left out otherwise (the dataset's name stays, in the provenance). ``--record-paths`` keeps
absolute paths, as older stores have them. fsspec URLs name shared storage, not a user's disk,
and are kept (without any ``user:password@`` part). None of this enters the provenance key.

Read by ``verify --repair`` (which re-extracts) and ``epcache attention`` (which shows images),
which resolve a relative record against the store's location.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

from epcache._fs.paths import HF_PREFIX as HF
from epcache._fs.paths import is_url as _is_url
from epcache._fs.paths import resolve_recorded_path, store_parent

__all__ = [
    "MAX_CLIMB",
    "is_location",
    "portable_data_root",
    "portable_location",
    "portable_split_source",
    "rebased_data_root",
    "recorded_data_root",
    "recorded_source_options",
    "records_data_root",
]

MAX_CLIMB = 2  # '..' steps a recorded path may take above the store's parent directory


def is_location(text: str) -> bool:
    """An ``hf:`` dataset or an fsspec URL: kept as a string (a Path would fold ``s3://`` to ``s3:/``)."""
    return text.startswith(HF) or _is_url(text)


def portable_location(path: str | Path, store: str, *, record_paths: bool) -> str | None:
    """A local ``path`` as a store at ``store`` records it: relative to the store's parent, or None.

    With ``record_paths`` the resolved absolute path (the behaviour before paths were made
    portable). A path that needs more than ``MAX_CLIMB`` ``..`` steps, lies on another drive, or
    belongs to a store behind a URL gives None: the climb would spell out the host's layout. An
    fsspec URL is returned as it is, less any credentials.
    """
    if _is_url(str(path)):
        return _without_userinfo(str(path))
    target = Path(path).expanduser().resolve()
    if record_paths:
        return str(target)
    base = store_parent(store)
    if base is None:
        return None
    try:
        rel = PurePath(os.path.relpath(target, base))
    except ValueError:  # another drive (Windows): no relative path exists
        return None
    climb = 0
    for part in rel.parts:
        if part != "..":
            break
        climb += 1
    if climb > MAX_CLIMB or ".." in rel.parts[climb:]:
        return None
    return rel.as_posix()


def portable_data_root(kind: str, location: str, store: str, *, record_paths: bool) -> str | None:
    """``extra.data_root`` for a ``--data`` of ``kind`` ("local", "hf" or "url") at ``location``."""
    rel = portable_location(location, store, record_paths=record_paths)
    if rel is None:
        return None
    return HF + rel if kind == "hf" else rel


def portable_split_source(source: str, root: Path | str, *, record_paths: bool) -> str | None:
    """A split source as recorded: an absolute CSV file becomes relative to the data root, or None.

    Split sources are otherwise relative to the data root already (subdirectories, shard
    patterns, HF splits); an absolute CSV elsewhere is left out (repair then asks for ``--split``).
    """
    if record_paths or not Path(source).is_absolute() or is_location(str(root)):
        return source
    try:
        rel = PurePath(os.path.relpath(Path(source).resolve(), Path(root).resolve()))
    except ValueError:  # another drive (Windows)
        return None
    return None if ".." in rel.parts else rel.as_posix()


def rebased_data_root(extra: Mapping[str, Any], source: str, store: str, *, record_paths: bool) -> str | None:
    """The source store's data root recorded for a store derived from it at ``store``.

    A relative record is resolved against the source's location first; a root that cannot be
    resolved (the source sits behind a URL) is left out.
    """
    text = extra.get("data_root")
    if not isinstance(text, str) or not text:
        return None
    if _is_url(text):
        return _without_userinfo(text)
    path = resolve_recorded_path(text, source)
    if path is None:
        return None
    hf = path.startswith(HF)
    return portable_data_root("hf" if hf else "local", path.removeprefix(HF), store, record_paths=record_paths)


def records_data_root(extra: Mapping[str, Any]) -> bool:
    """Whether the store recorded a data root at all (stores made without ``--record-paths`` may not)."""
    text = extra.get("data_root")
    return isinstance(text, str) and bool(text)


def recorded_data_root(extra: Mapping[str, Any], store: str) -> Path | str | None:
    """The data root a store recorded at extraction (``extra.data_root``), if it is a directory here.

    A relative record is resolved against the parent directory of the store at ``store``.
    Stores move between machines; a recorded root that does not exist here is no default at all,
    so callers fall back to asking for ``--data``. An ``hf:`` root is returned as its string when
    its directory exists, an fsspec URL (WebDataset shards) as it is.
    """
    if not records_data_root(extra):
        return None
    text = resolve_recorded_path(str(extra["data_root"]), store)
    if text is None or _is_url(text):
        return text
    path = Path(text.removeprefix(HF))
    if not path.is_dir():
        return None
    return text if text.startswith(HF) else path


def recorded_source_options(dataset: Mapping[str, Any], pre: Mapping[str, Any]) -> dict[str, Any]:
    """How the store's samples were read (WebDataset keys, HF columns, GPU decoding), as recorded."""
    keys = ("image_key", "label_key", "image_column", "label_column")
    fields = ("wds_image_key", "wds_label_key", "image_column", "label_column")
    out = {f: str(dataset[k]) for k, f in zip(keys, fields, strict=True) if isinstance(dataset.get(k), str)}
    if pre.get("decode"):
        out["decode"] = "gpu"
    return out


def _without_userinfo(url: str) -> str:
    """``scheme://user:secret@host/...`` without its credentials: they never enter metadata."""
    scheme, sep, rest = url.partition("://")
    host, slash, tail = rest.partition("/")
    return scheme + sep + host.rpartition("@")[2] + slash + tail if sep else url
