"""`epcache probe`'s early refusal of a mistyped option, before torch and timm are imported.

The full checks (``epcache.probe.plan``) run after the heavy imports and store reads, which under
load takes most of a minute; a wrong store path, split, layer, head or token kind is then a long
wait for a one-line answer. This check reads a local zarr store's root document as JSON (without
``epcache.store``, whose zarr and ml_dtypes take seconds to import; HDF5 goes through ``open_store``)
and the flat options, and raises the full checks' own errors in their own words. It never refuses
what the full checks accept: it checks only what they check, and with ``--grid`` only the store
path (a grid file may set splits, layers, heads and tokens; applying it needs the torch-side sweep).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from epcache._layerspec import resolve_stored_layers
from epcache._storepeek import read_local_zarr_document, unknown_split_error
from epcache.errors import ConfigError
from epcache.probe.config.fields import raise_errors
from epcache.probe.config.inputs import SEQUENCE_SOURCES, VECTOR_SOURCES, unknown_tokens_text
from epcache.probe.config.probe_config import _HEAD_RE
from epcache.probe.config.suite import check_suite, check_suite_store
from epcache.probe.names import (
    BUILTIN_HEAD_KINDS,
    DENSE_KINDS,
    LINEAR_FITS,
    SOLVER_KINDS,
    TRAINED_HEAD_KINDS,
    unknown_head_text,
)

if TYPE_CHECKING:
    from epcache.probe.config.probe_config import ProbeConfig

__all__ = ["precheck_probe"]

_H5_SUFFIXES = (".h5", ".hdf5", ".hdf")  # what ``detect_format`` reads as HDF5 by name


def precheck_probe(config: ProbeConfig) -> None:
    """Refuse the typos the full checks would refuse, reading only option text and store metadata.

    Raises:
        StoreNotFoundError: the store (or eval store) is missing or not an epcache store.
        UnknownSplitError: the train or eval split is not in its store.
        UnknownLayerError: a requested layer is not stored.
        ConfigError: unknown head or token kinds (one message, as the sweep's checks give it); a preset with the
            flags it fixes.
        EpcacheError: whatever ``open_store`` refuses, where the root document cannot be read directly.
    """
    if _is_url(config.store):  # each metadata read is a request: the full check reads it once
        return
    tap = config.inputs.tap
    doc = _tap_document(config.store, tap)
    if config.grid is not None:  # the grid may set everything below
        return
    check_suite(config)  # a preset with a flag it fixes: refused from the option text alone
    eval_location = config.inputs.eval_store
    if eval_location is None or not _is_url(eval_location):
        eval_doc = doc if eval_location is None else _tap_document(eval_location, tap)
        _check_store(config, doc, eval_doc)
    _check_kinds(config)


def _tap_document(location: str, tap: str) -> dict[str, Any]:
    """The root document of the store the heads read: ``location``'s own, or that of its tap ``tap``."""
    doc = _root_document(location)
    if tap == "block":
        return doc
    taps = doc.get("taps") or {}
    if tap not in taps:  # open_store's refusal, in its words, without importing the store package
        listed = ", ".join(taps) if taps else "none"
        raise ConfigError(f"{location} has no tap {tap!r} (its taps: {listed}); re-extract with `--taps {tap}` "
                          "(or probe it without --tap for the block outputs)")
    return _root_document(f"{location.rstrip('/')}/taps/{tap}")  # cache_layout.md §2.7: taps/<name>/


def _root_document(location: str) -> dict[str, Any]:
    """The root document of a local store; HDF5 and odd documents go through ``open_store``, for its message."""
    if not location.lower().endswith(_H5_SUFFIXES) and not Path(location).is_file():
        doc = read_local_zarr_document(location)  # a missing or non-store path is refused here, in its words
        if doc is not None:
            return {**doc, "location": location}
    from epcache.store import open_store  # lazy: zarr, h5py and ml_dtypes load only for HDF5 or a doubtful document

    with open_store(location) as store:
        backbone = {"name": store.meta.backbone.name, "num_blocks": store.meta.backbone.num_blocks}
        return {"splits": store.splits, "layers": list(store.meta.layers), "backbone": backbone, "location": location,
                "taps": store.meta.taps}


def _check_store(config: ProbeConfig, doc: dict[str, Any], eval_doc: dict[str, Any]) -> None:
    for d, split in ((doc, config.inputs.train_split), (eval_doc, config.inputs.eval_split)):
        if split not in d["splits"]:
            raise unknown_split_error(d["location"], split, d["splits"])
    backbone = doc["backbone"]
    resolve_stored_layers(config.inputs.layers, doc["layers"], backbone.get("num_blocks"),
                          model=f"the store's backbone {backbone.get('name')}")
    split = doc["splits"].get(config.inputs.train_split) if isinstance(doc["splits"], dict) else None
    if isinstance(split, dict) and isinstance(split.get("num_samples"), int):  # usable rows are at most these
        check_suite_store(config, split["num_samples"])


def _check_kinds(config: ProbeConfig) -> None:
    errors: list[str] = []
    for text in config.heads.head:
        m = _HEAD_RE.match(text)  # a spec that does not parse is left to the full check's message
        if m is not None and m.group(1) not in BUILTIN_HEAD_KINDS + DENSE_KINDS:
            errors.append(unknown_head_text(m.group(1), text, TRAINED_HEAD_KINDS, SOLVER_KINDS))
    if config.heads.linear_fit not in LINEAR_FITS:
        errors.append(f"--linear-fit must be one of {', '.join(LINEAR_FITS)}, got {config.heads.linear_fit!r}")
    bad = [t for t in config.inputs.tokens if t not in VECTOR_SOURCES + SEQUENCE_SOURCES]
    if bad:
        errors.append(unknown_tokens_text(bad))
    raise_errors(errors)


def _is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")
