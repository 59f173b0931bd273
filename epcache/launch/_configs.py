"""The command's config as JSON in the run plan, and back: how every task learns what to run.

A task on another machine rebuilds the same ``ExtractConfig`` / ``ProbeConfig`` from plain JSON
(paths as text, tuples as lists) and the dataclass checks it again; no Python object travels.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from epcache.extract import ExtractConfig
from epcache.probe import ProbeConfig

__all__ = ["extract_config_from_json", "extract_config_to_json", "probe_config_from_json", "probe_config_to_json"]

_PATH_FIELDS = ("weights", "hf_cache_dir")  # Path | None fields of ExtractConfig


def extract_config_to_json(config: Any) -> dict[str, Any]:
    """Plain JSON of an ``ExtractConfig`` (the process-dependent ``workers`` default included)."""
    doc = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    return json.loads(json.dumps(doc, default=_plain))


def extract_config_from_json(doc: dict[str, Any]) -> Any:
    """The ``ExtractConfig`` of :func:`extract_config_to_json`, checked again.

    Raises:
        ConfigError: a field the dataclass refuses.
    """
    kwargs = dict(doc)
    for name in _PATH_FIELDS:
        if kwargs.get(name) is not None:
            kwargs[name] = Path(kwargs[name])
    kwargs["view_splits"] = tuple(kwargs.get("view_splits", ()))
    return ExtractConfig(**kwargs)


def probe_config_to_json(config: Any) -> dict[str, Any]:
    return dict(config.to_json())


def probe_config_from_json(doc: dict[str, Any]) -> Any:
    """The ``ProbeConfig`` of :func:`probe_config_to_json` (its checks normalise lists to tuples)."""
    return ProbeConfig(**doc)


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    if hasattr(value, "items"):
        return dict(value.items())
    raise TypeError(f"cannot write {type(value).__name__} into a launch plan")
