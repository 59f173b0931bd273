"""The metadata of a derived store: the source's, with its layers, grid and dtype changed as asked."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from epcache._layerspec import parse_layers
from epcache.errors import ConfigError, UnknownLayerError
from epcache.extract.locations import portable_location, rebased_data_root
from epcache.store import FORMAT_VERSION, StoreMeta
from epcache.store.layout.light import light_meta
from epcache.store.layout.poolgrid import pooled_meta

__all__ = ["derived_meta", "select_layers"]

# extra keys of the source that describe its own files, not the tokens: never copied (data_root is rebased)
_NOT_INHERITED = ("compressor", "pooled", "derived_from", "data_root")


def select_layers(meta: StoreMeta, spec: str | None) -> tuple[int, ...]:
    """Stored layers named by ``spec``, with extract's and probe's syntax.

    ``all`` and ``last`` mean the stored ones; other parts (``-4:``, ``last:2``, ``0,5,11``) count in
    the backbone's blocks, as at extraction, and must name stored layers.

    Raises:
        UnknownLayerError: a layer the source does not store (the message lists the stored ones).
        ConfigError: a spec that does not parse.
    """

    if spec is None:
        return meta.layers
    chosen: set[int] = set()
    blocks = meta.backbone.num_blocks or max(meta.layers) + 1
    for part in (p.strip().lower() for p in spec.split(",")):
        if part == "all":
            chosen.update(meta.layers)
        elif part == "last":
            chosen.add(meta.layers[-1])
        elif part:
            chosen.update(parse_layers(part, blocks, model=f"the source's backbone {meta.backbone.name}"))
    if not chosen:
        raise ConfigError(f"--layers {spec!r} selects no layer; use all, last, -4: or a list like 0,5,11")
    missing = sorted(chosen - set(meta.layers))
    if missing:
        raise UnknownLayerError(
            f"--layers {spec!r}: the source stores no layer(s) {missing} (stored: "
            f"{', '.join(map(str, meta.layers))}); a conversion can only keep layers the source has"
        )
    return tuple(sorted(chosen))


def derived_meta(
    meta: StoreMeta,
    *,
    layers: tuple[int, ...],
    pool_patches: int,
    dtype: str,
    keep: tuple[str, ...] | None = None,
    quantization: str | None,
    source_provenance: str,
    source_location: str,
    ops: dict[str, Any],
    location: str,
    record_paths: bool,
    source_document: Mapping[str, Any] | None = None,
) -> StoreMeta:
    """``meta`` restricted to ``layers``, pooled by ``pool_patches`` (or made light by ``keep``), in
    ``dtype`` (stored as ``quantization`` codes + scales, or plain), naming its source.

    ``derived_from`` (provenance of the source and the ops) is inside the new provenance key; the
    source's name and location are not (the same tokens converted from a moved copy are the same
    store) and go to ``extra.derived_from``. Like extraction's data root, the source's location and
    the inherited data root are recorded relative to the new store at ``location`` (or left out),
    absolute only with ``record_paths`` (``extract._recorded``). Top-level keys of the stored
    ``source_document`` that ``StoreMeta`` does not model (a third-party writer's) are copied as they
    are: the new document is the source's (cache_layout.md §2.4), and they stay inside its key.

    Raises:
        ConfigError: a kept layer whose grid ``pool_patches`` does not divide.
    """
    shapes = {layer: meta.for_layer(layer) for layer in layers}
    last = shapes[layers[-1]]
    differ = len({(m.layout.grid, m.dim) for m in shapes.values()}) > 1
    kept = dataclasses.replace(
        meta,
        layers=layers,
        layout=last.layout,
        dim=last.dim,
        num_tokens=last.num_tokens,
        layer_shapes={layer: (m.layout.grid, m.dim) for layer, m in shapes.items()} if differ else {},
    )
    pooled = pooled_meta(kept, pool_patches, what=f"the source {source_location}")
    if keep is not None:  # a light copy (cache_layout.md §2.6)
        pooled = light_meta(pooled, keep, what=f"the source {source_location}")
    extra = {k: v for k, v in meta.extra.items() if k not in _NOT_INHERITED}
    where = portable_location(source_location, location, record_paths=record_paths)
    extra["derived_from"] = {"name": source_location.rstrip("/").rsplit("/", 1)[-1],
                             **({"location": where} if where is not None else {}), "provenance": source_provenance}
    root = rebased_data_root(meta.extra, source_location, location, record_paths=record_paths)
    if root is not None:
        extra["data_root"] = root
    derived = dataclasses.replace(
        pooled,
        dtype=dtype,  # type: ignore[arg-type]
        quantization=quantization,
        extra=extra,
        derived_from={"provenance": source_provenance, "ops": ops},
        taps=None,  # the copy holds the converted block outputs; the source's taps (nested stores) stay there
    )
    known = meta.to_json()  # what parsing the source's document kept; the rest is a writer's own
    added = {k: v for k, v in (source_document or {}).items() if k not in known and k not in ("splits", "provenance")}
    if not added:
        return derived
    fields = {f.name: getattr(derived, f.name) for f in dataclasses.fields(derived)}
    return WithWriterKeys(**fields, writer_keys=added)


@dataclasses.dataclass(frozen=True)
class WithWriterKeys(StoreMeta):
    """Store metadata plus top-level document keys epcache does not model, written back as they were.

    ``StoreMeta`` parses the keys of cache_layout.md §2 and drops the rest; a copy made by ``convert``
    must keep a third-party writer's keys (its document is the source's), and so its provenance key.
    """

    writer_keys: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self, version: str = FORMAT_VERSION) -> dict[str, Any]:
        return {**self.writer_keys, **super().to_json(version)}
