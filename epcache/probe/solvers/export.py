"""Export the vectors the solver heads fit, so scikit-learn or a notebook sees exactly the same matrix.

``export_features`` asks the solver heads' own pooled view (:mod:`epcache.probe.solvers.vectors`)
for every usable row of one split and layer, so a head refitted outside epcache (a
``LogisticRegression`` on the same ``gap`` matrix) starts from the bytes ``epcache probe`` used:
CLS and GAP from one verified streamed pass, float32, GAP accumulated in float64. With ``rundir``
the view is read from (or written to) that run's ``RUNDIR/pooled`` cache, checked by sha256 as a
sweep checks it. ``tokens pooled`` is the model's own pooled output (view 0, float32), the vector
the trained ``linear`` heads read with ``--tokens pooled``.

Rows are the split's samples in their dataset order (``index``: the sample's position in the
split as extracted, not the stored row, which follows a seeded permutation); samples labelled -1
(skipped at extraction) are left out, as every probe leaves them out. The file is written through
a temporary and renamed, so a killed export leaves nothing that looks complete.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from epcache._docs import doc, document_fields
from epcache._fs.atomic import atomic_write
from epcache.errors import (
    ConfigError,
    IncompleteStoreError,
    NonFiniteFeaturesError,
    StoreExistsError,
    UnknownLayerError,
)
from epcache.probe.solvers.vectors import POOLINGS, PooledCache
from epcache.store import FeatureStore, open_store

__all__ = ["EXPORT_FORMATS", "EXPORT_TOKENS", "ExportConfig", "ExportResult", "export_features"]

EXPORT_TOKENS: tuple[str, ...] = (*POOLINGS, "pooled")
EXPORT_FORMATS: tuple[str, ...] = (".npz", ".parquet")
_PARQUET_HINT = 'pip install "epcache[hf]"'


@document_fields
@dataclass(frozen=True)
class ExportConfig:
    """One export: the ``tokens`` vectors of ``split`` at ``layer`` of ``store``, written to ``out``."""

    store: Path | str = doc(doc="the feature store (zarr directory, .h5 file or URL)")
    out: Path | str = doc(doc="the file to write: .npz (numpy, no pickle) or .parquet (needs pyarrow)")
    layer: int | None = doc(None, doc="stored block index (negative: from the last stored layer); "
                            "None: the last stored layer (tokens pooled: no layer)")
    tokens: str = doc("gap", doc="cls, gap, cls+gap (what the solver heads fit) or pooled (the model's own "
                      "pooled output)")
    split: str = doc("train", doc="the split whose samples become the rows")
    rundir: Path | str | None = doc(None, doc="a run directory whose solver-head cache RUNDIR/pooled is read "
                                    "(sha256-checked) and filled; None: pooled from the store, nothing cached")
    force: bool = doc(False, doc="replace an existing `out`")

    def __post_init__(self) -> None:
        if self.tokens not in EXPORT_TOKENS:
            raise ConfigError(f"unknown tokens {self.tokens!r}; export reads {', '.join(EXPORT_TOKENS)}")
        if Path(self.out).suffix.lower() not in EXPORT_FORMATS:
            raise ConfigError(f"--out {self.out}: the suffix must be {' or '.join(EXPORT_FORMATS)}")
        if self.tokens == "pooled" and self.layer is not None:
            raise ConfigError("tokens pooled (the model's own pooled output) belongs to no layer; leave --layer out")


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote: ``features[i]`` is sample ``index[i]`` of the split, labelled ``labels[i]``."""

    out: str
    split: str
    layer: int | None  # None for tokens pooled
    tokens: str
    rows: int
    dim: int
    excluded: int  # samples labelled -1 (skipped at extraction), not exported
    features_from: str  # "store" or "cache" (RUNDIR/pooled, checked by sha256)

    def format_text(self) -> str:
        where = "pooled output" if self.layer is None else f"layer {self.layer}"
        skipped = f"; {self.excluded} sample(s) labelled -1 left out" if self.excluded else ""
        return (f"exported {self.rows} x {self.dim} float32 {self.tokens} vectors of split {self.split!r} "
                f"({where}, from the {self.features_from}) to {self.out}{skipped}")


@dataclass(frozen=True)
class _Table:
    """The exported arrays, rows in the split's sample order."""

    features: np.ndarray  # [n, D] float32
    labels: np.ndarray  # [n] int64
    ids: np.ndarray  # [n] fixed-width unicode
    index: np.ndarray  # [n] int64: the sample's position in the split's dataset order
    classes: np.ndarray  # [C] fixed-width unicode


def export_features(config: ExportConfig, *, say: Callable[[str], None] = lambda msg: None) -> ExportResult:
    """Write the vectors the solver heads fit for ``config.split`` (see the module docstring).

    Raises:
        StoreNotFoundError, UnknownSplitError, UnknownLayerError: what the store lacks.
        MissingPooledError: tokens pooled of a store extracted without its pooled output.
        ConfigError: a suffix other than .npz / .parquet, CLS of a backbone without one, no pyarrow for .parquet.
        StoreExistsError: ``out`` exists and ``force`` is off.
        IncompleteStoreError: blocks of the split never written.
        NonFiniteFeaturesError: inf/nan vectors (names the rows).
    """
    out = Path(config.out)
    if out.exists() and not config.force:
        raise StoreExistsError(f"{out} exists; pass --force to replace it")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: the folder {out.parent} does not exist")
    if out.suffix.lower() == ".parquet":
        _require_pyarrow()
    with open_store(config.store) as store:
        layer = _resolve_layer(store, config.layer) if config.tokens != "pooled" else None
        table, features_from = _table(store, config, layer, say)
        excluded = store.split(config.split).num_samples - len(table.labels)
        meta = {"store": store.location, "provenance": store.provenance, "split": config.split, "layer": layer,
                "tokens": config.tokens, "order": "the split's sample index order (index)"}
    if out.suffix.lower() == ".npz":
        atomic_write(out, lambda f: f.write(_npz_bytes(table, meta)))
    else:
        atomic_write(out, lambda f: f.write(_parquet_bytes(table, meta)))
    return ExportResult(str(out), config.split, layer, config.tokens, len(table.labels), table.features.shape[1],
                        excluded, features_from)


def _resolve_layer(store: FeatureStore, layer: int | None) -> int:
    """The stored block index ``layer`` names (None: the last stored; negative: from the end of the stored list)."""
    stored = store.meta.layers
    if layer is None:
        return int(stored[-1])
    if layer < 0 and -len(stored) <= layer:
        return int(stored[layer])
    if layer not in stored:
        raise UnknownLayerError(f"{store.location} has no layer {layer} (stored layers: "
                                f"{', '.join(map(str, stored))}); export one of those")
    return int(layer)


def _table(
    store: FeatureStore, config: ExportConfig, layer: int | None, say: Callable[[str], None]
) -> tuple[_Table, str]:
    """The split's usable rows (labelled >= 0) in sample order and their vectors, from the solver heads' view."""
    s = store.split(config.split)
    missing = store.missing_blocks(config.split, layer)
    if missing:
        shown = ", ".join(map(str, missing[:8])) + (", ..." if len(missing) > 8 else "")
        raise IncompleteStoreError(f"{store.location}: split {config.split!r} has blocks {shown} not written; finish "
                                   "the extraction (run `epcache extract` again to resume it)")
    labels = store.read_labels(config.split)
    order = store.read_order(config.split)
    rows = np.flatnonzero(labels >= 0).astype(np.int64)  # stored rows, ascending: the solver heads' row set
    if config.tokens == "pooled":
        store.require_pooled(config.split)
        x = np.asarray(store.read_pooled(config.split)[rows, 0], dtype=np.float32)
        _check_finite(store, config.split, rows, x)
        features_from = "store"
    else:
        if "cls" in config.tokens and store.meta.layout.cls_index is None:
            raise ConfigError(f"{store.location}: the backbone has no CLS token; export tokens gap")
        if config.rundir is not None and not Path(config.rundir).is_dir():
            raise ConfigError(f"--rundir {config.rundir} is not a directory (a run written by `epcache probe --out`)")
        cache = PooledCache(None if config.rundir is None else Path(config.rundir) / "pooled", say=say)
        view = cache.get(store, config.split, layer, rows)  # type: ignore[arg-type]  # layer set for cls/gap
        x = view.features(config.tokens)
        features_from = "cache" if view.from_cache else "store"
    by_sample = np.argsort(order[rows], kind="stable")  # stored rows -> the split's dataset order
    ids = store.read_ids(config.split)
    table = _Table(
        features=np.ascontiguousarray(x[by_sample]),
        labels=labels[rows][by_sample],
        ids=np.array([ids[r] for r in rows[by_sample]], dtype=str),
        index=order[rows][by_sample],
        classes=np.array(list(s.classes), dtype=str),
    )
    return table, features_from


def _check_finite(store: FeatureStore, split: str, rows: np.ndarray, x: np.ndarray) -> None:
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        shown = ", ".join(map(str, rows[bad][:10].tolist()))
        raise NonFiniteFeaturesError(f"{store.location}: split {split!r} has inf/nan pooled outputs in "
                                     f"{int(bad.sum())} stored row(s) [{shown}]; re-extract with --dtype float32")


def _npz_bytes(table: _Table, meta: dict[str, Any]) -> bytes:
    """An ``.npz`` that ``np.load(..., allow_pickle=False)`` reads: strings as fixed-width unicode, no objects."""
    buf = io.BytesIO()
    np.savez(buf, features=table.features, labels=table.labels, ids=table.ids, index=table.index,
             classes=table.classes, meta=np.array(json.dumps(meta)))
    return buf.getvalue()


def _parquet_bytes(table: _Table, meta: dict[str, Any]) -> bytes:
    """One row per sample: index, id, label, class and ``features`` (a fixed-size list of float32)."""
    import pyarrow as pa  # optional dependency (the hf extra); checked by _require_pyarrow before any work
    import pyarrow.parquet as pq  # optional dependency, as above

    n, d = table.features.shape
    flat = pa.array(table.features.reshape(-1), type=pa.float32())
    columns = {
        "index": pa.array(table.index, type=pa.int64()),
        "id": pa.array(table.ids.tolist(), type=pa.string()),
        "label": pa.array(table.labels, type=pa.int64()),
        "class": pa.array(table.classes[table.labels].tolist() if n else [], type=pa.string()),
        "features": pa.FixedSizeListArray.from_arrays(flat, d),
    }
    schema_meta = {"epcache": json.dumps({**meta, "classes": table.classes.tolist()})}
    arrow = pa.table(columns).replace_schema_metadata(schema_meta)
    buf = pa.BufferOutputStream()
    pq.write_table(arrow, buf)
    return bytes(buf.getvalue().to_pybytes())


def _require_pyarrow() -> None:
    try:
        import pyarrow  # noqa: F401  # optional dependency: only a .parquet export needs it
    except ImportError:
        raise ConfigError(f"--out .parquet needs pyarrow: {_PARQUET_HINT} (or write .npz)") from None
