"""Hugging Face datasets as a split: a ``save_to_disk`` directory (Arrow files) or parquet files.

Read with pyarrow alone (the ``hf`` extra); the ``datasets`` package is not needed. ``--data
hf:/path`` is the dataset directory; a split source is a ``save_to_disk`` directory under it
(``state.json`` + ``data-*.arrow``; a ``DatasetDict``'s split subdirectory), a directory of
``*.parquet`` files, a glob of parquet files (``data/train-*.parquet``), or ``.`` for the root.

The image column holds ``{"bytes", "path"}`` structs (``datasets.Image``) or raw bytes; the label
column integers, named by the ``ClassLabel`` feature when ``dataset_info.json`` (or the parquet
schema's ``huggingface`` metadata) has one. The sample id is ``<source>/<row>``, the row index
over the split's files in order, zero-padded so ids sort in row order.

Reading: Arrow files are memory-mapped, so any row costs one image's bytes. A parquet row costs
decoding its row group's image column: in the stored (permuted) order that is one row group per
image, so parquet with large row groups is slow to extract; prefer ``save_to_disk`` or small
row groups (``datasets`` writes 100-row groups for image data).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from epcache.errors import ConfigError

__all__ = ["HF_PREFIX", "HfListing", "HfReader", "list_hf"]

HF_PREFIX = "hf:"
_CACHED_GROUPS = 4  # parquet row groups a worker keeps decoded


@dataclass
class HfReader:
    """Reads sample ``i``'s image cell (picklable; opened tables are per process)."""

    files: tuple[str, ...]
    fmt: str  # "arrow" (save_to_disk IPC stream files) or "parquet"
    file_of: np.ndarray  # int32 [N]
    row: np.ndarray  # int64 [N] row within its file
    column: str
    bad: dict[int, str] = field(default_factory=dict)
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.row)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": {}}

    def where(self, index: int) -> str:
        return f"{self.files[int(self.file_of[index])]} (row {int(self.row[index])}, column {self.column!r})"

    def read(self, index: int) -> bytes:
        if index in self.bad:
            raise ValueError(self.bad[index])
        f, r = int(self.file_of[index]), int(self.row[index])
        cell = self._column_slice(f, r)
        if isinstance(cell, dict):
            if cell.get("bytes"):
                return bytes(cell["bytes"])
            if cell.get("path"):
                path = Path(cell["path"])
                path = path if path.is_absolute() else Path(self.files[f]).parent / path
                return path.read_bytes()
            raise ValueError(f"image cell of row {r} has neither bytes nor a path")
        if isinstance(cell, bytes | bytearray):
            return bytes(cell)
        raise ValueError(f"image cell of row {r} is {type(cell).__name__}, not image bytes")

    def _column_slice(self, f: int, r: int) -> Any:
        pid = os.getpid()
        if self.fmt == "arrow":
            key = (pid, f)
            table = self._cache.get(key)
            if table is None:
                table = self._cache[key] = _read_arrow(self.files[f], [self.column])
            return table.column(self.column)[r].as_py()
        import pyarrow.parquet as pq

        pf = self._cache.get((pid, f, "file"))
        if pf is None:
            pf = self._cache[(pid, f, "file")] = pq.ParquetFile(self.files[f])
        starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
        g = int(np.searchsorted(starts, r, side="right")) - 1
        key = (pid, f, g)
        col = self._cache.pop(key, None)  # re-inserted last: the dict's order is the LRU order
        if col is None:
            col = pf.read_row_group(g, columns=[self.column]).column(self.column)
            groups = [k for k in self._cache if len(k) == 3 and k[2] != "file"]
            for old in groups[: max(0, len(groups) - _CACHED_GROUPS + 1)]:
                del self._cache[old]
        self._cache[key] = col
        return col[r - int(starts[g])].as_py()

    def subset(self, keep: list[int]) -> HfReader:
        new_index = {old: new for new, old in enumerate(keep)}
        bad = {new_index[i]: r for i, r in self.bad.items() if i in new_index}
        k = np.asarray(keep, dtype=np.int64)
        return HfReader(self.files, self.fmt, self.file_of[k], self.row[k], self.column, bad)


@dataclass(frozen=True)
class HfListing:
    """One split's rows (ids in row order) with their labels and the reader."""

    ids: list[str]
    labels: list[int]  # -1 where the label is missing (then the row is in ``reader.bad``)
    reader: HfReader
    class_names: tuple[str, ...] | None  # from the ClassLabel feature, when recorded
    problems: list[str]


def list_hf(root: Path, split: str, source: str, *, image_column: str, label_column: str) -> HfListing:
    """List one split of the dataset at ``root``; reads the label column only.

    Raises:
        ConfigError: no pyarrow, no such source, no data files, a missing column, bad labels.
    """
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ConfigError("hf: sources are read with pyarrow: pip install 'epcache[hf]' (or pyarrow)") from None
    files, fmt, info_dir = _data_files(root, split, source)
    import pyarrow.parquet as pq

    labels: list[int] = []
    file_of: list[int] = []
    rows: list[int] = []
    names: tuple[str, ...] | None = None
    for i, path in enumerate(files):
        schema = pq.read_schema(path) if fmt == "parquet" else _read_arrow(path, None).schema
        for col in (image_column, label_column):
            if col not in schema.names:
                flag = "--image-column" if col == image_column else "--label-column"
                have = ", ".join(schema.names)
                raise ConfigError(f"split {split!r}: {path} has no column {col!r} (columns: {have}); pass {flag} NAME")
        if names is None:
            names = _class_names(schema.metadata, info_dir, label_column)
        table = pq.read_table(path, columns=[label_column]) if fmt == "parquet" else _read_arrow(path, [label_column])
        values = table.column(label_column).to_pylist()
        labels += [-1 if v is None else v for v in values]
        file_of += [i] * len(values)
        rows += range(len(values))
    if not labels:
        raise ConfigError(f"split {split!r}: {source!r} under {root} has no rows")
    if not all(isinstance(v, int) for v in labels):
        raise ConfigError(f"split {split!r}: label column {label_column!r} is not integer (class indices 0..C-1)")
    width = max(8, len(str(len(labels) - 1)))
    prefix = "" if source.strip("./") == "" else source.strip("/").removeprefix("./") + "/"
    ids = [f"{prefix}{r:0{width}d}" for r in range(len(labels))]
    bad = {r: f"label {label_column!r} is missing (null)" for r, v in enumerate(labels) if v == -1}
    negative = [r for r, v in enumerate(labels) if v < -1]
    if negative:
        raise ConfigError(f"split {split!r}: row {negative[0]} has label {labels[negative[0]]}; labels are 0..C-1")
    reader = HfReader(tuple(str(p) for p in files), fmt, np.asarray(file_of, dtype=np.int32),
                      np.asarray(rows, dtype=np.int64), image_column, bad)
    return HfListing(ids, labels, reader, names, [f"{ids[r]}: {reason}" for r, reason in bad.items()])


def _data_files(root: Path, split: str, source: str) -> tuple[list[Path], str, Path]:
    """The split's data files in order, their format, and where dataset_info.json may be."""
    rel = source.strip()
    if rel.startswith("/") or ".." in rel.replace("\\", "/").split("/"):
        raise ConfigError(f"split {split!r}: {source!r} must be relative to the dataset directory {root}")
    d = root / rel
    if d.is_dir():
        if (d / "state.json").is_file():
            state = json.loads((d / "state.json").read_text(encoding="utf-8"))
            files = [d / x["filename"] for x in state.get("_data_files", [])]
            missing = [str(p) for p in files if not p.is_file()]
            if missing or not files:
                raise ConfigError(f"split {split!r}: {d}/state.json lists missing arrow files {missing[:3]}")
            return files, "arrow", d
        if (d / "dataset_dict.json").is_file():
            splits = json.loads((d / "dataset_dict.json").read_text(encoding="utf-8")).get("splits", [])
            raise ConfigError(f"split {split!r}: {d} is a DatasetDict with splits {splits}; name one per split, "
                              f"e.g. --split {split}={splits[0] if splits else 'train'}")
        files = sorted(d.rglob("*.parquet"))
        info = d
    else:
        files = sorted(p for p in root.glob(rel) if p.is_file())
        info = root
    if not files:
        raise ConfigError(f"split {split!r}: no save_to_disk dataset (state.json) or parquet files at {d}")
    if not all(p.suffix == ".parquet" for p in files):
        raise ConfigError(f"split {split!r}: {rel!r} matches files that are not .parquet: {files[0]}")
    return files, "parquet", info


def _read_arrow(path: str | Path, columns: list[str] | None) -> Any:
    """A save_to_disk Arrow file (IPC stream), memory-mapped: reading it copies no image bytes."""
    import pyarrow as pa

    source = pa.memory_map(str(path), "r")
    try:
        table = pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        table = pa.ipc.open_file(source).read_all()
    return table.select(columns) if columns is not None else table


def _class_names(metadata: dict[bytes, bytes] | None, info_dir: Path, column: str) -> tuple[str, ...] | None:
    """ClassLabel names from dataset_info.json or the schema's ``huggingface`` metadata, if any."""
    features: Any = None
    info_file = info_dir / "dataset_info.json"
    if info_file.is_file():
        features = json.loads(info_file.read_text(encoding="utf-8")).get("features")
    elif metadata and b"huggingface" in metadata:
        features = json.loads(metadata[b"huggingface"]).get("info", {}).get("features")
    feature = features.get(column) if isinstance(features, dict) else None
    if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" and isinstance(feature.get("names"), list):
        return tuple(str(n) for n in feature["names"])
    return None
