"""The metadata of a derived store: the source's, with its layers, grid and dtype changed as asked."""

from __future__ import annotations

import dataclasses
from typing import Any

from epcache.errors import ConfigError, UnknownLayerError
from epcache.store import StoreMeta, pooled_meta

__all__ = ["derived_meta", "select_layers"]

# extra keys of the source that describe its own files, not the tokens: never copied
_NOT_INHERITED = ("compressor", "pooled", "derived_from")


def select_layers(meta: StoreMeta, spec: str | None) -> tuple[int, ...]:
    """Stored layers named by ``spec``, with extract's and probe's syntax.

    ``all`` and ``last`` mean the stored ones; other parts (``-4:``, ``last:2``, ``0,5,11``) count in
    the backbone's blocks, as at extraction, and must name stored layers.

    Raises:
        UnknownLayerError: a layer the source does not store (the message lists the stored ones).
        ConfigError: a spec that does not parse.
    """
    from epcache._layerspec import parse_layers

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
    quantization: str | None,
    source_provenance: str,
    source_location: str,
    ops: dict[str, Any],
) -> StoreMeta:
    """``meta`` restricted to ``layers``, pooled by ``pool_patches``, in ``dtype`` (stored as
    ``quantization`` codes + scales, or plain), naming its source.

    ``derived_from`` (provenance of the source and the ops) is inside the new provenance key; the
    source's location is not (the same tokens converted from a moved copy are the same store) and
    goes to ``extra.derived_from``.

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
    extra = {k: v for k, v in meta.extra.items() if k not in _NOT_INHERITED}
    extra["derived_from"] = {"location": source_location, "provenance": source_provenance}
    return dataclasses.replace(
        pooled,
        dtype=dtype,  # type: ignore[arg-type]
        quantization=quantization,
        extra=extra,
        derived_from={"provenance": source_provenance, "ops": ops},
    )
