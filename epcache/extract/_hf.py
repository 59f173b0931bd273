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

Trust: a cell holding only a ``path`` names a file relative to its data file's directory; like a
CSV path it must stay under the dataset directory (``_confine``), checked while listing (the
path cells only: Arrow is memory-mapped, parquet row groups whose statistics show no missing
bytes are not read) and again before each read. ``allow_outside_paths`` lifts this for datasets
that ``save_to_disk`` wrote with absolute paths. A data file that cannot be read (truncated,
corrupt) is refused naming it; with ``on_bad_image="skip"`` a parquet file whose footer is intact
keeps its rows' ids (they are skipped as bad samples), and a file whose rows cannot even be
counted is left out, recorded in ``SplitSource.skipped_files`` and the store's metadata. Rows of
later files then take its rows' numbers, so fix such a file before relying on ids across stores.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from epcache.errors import ConfigError
from epcache.extract._confine import confined_path

__all__ = ["HF_PREFIX", "OUTSIDE_PATHS_FIX", "HfListing", "HfReader", "list_hf"]

HF_PREFIX = "hf:"
OUTSIDE_PATHS_FIX = "pass --allow-outside-paths (allow_outside_paths=True) if this dataset's image paths are trusted"
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
    root: str = ""  # the dataset directory (resolved): path-only cells must stay under it
    allow_outside: bool = False  # path-only cells may name any file (allow_outside_paths)
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
        import pyarrow as pa

        f, r = int(self.file_of[index]), int(self.row[index])
        try:
            cell = self._column_slice(f, r)
        except pa.ArrowException as e:  # ArrowTypeError, ArrowNotImplementedError: not ValueError/OSError
            raise ValueError(f"{self.files[f]} cannot be read: {_one_line(e)}") from None
        if isinstance(cell, dict):
            if cell.get("bytes"):
                return bytes(cell["bytes"])
            if cell.get("path"):
                return self._path_bytes(f, r, str(cell["path"]))
            raise ValueError(f"image cell of row {r} has neither bytes nor a path")
        if isinstance(cell, bytes | bytearray):
            return bytes(cell)
        raise ValueError(f"image cell of row {r} is {type(cell).__name__}, not image bytes")

    def _path_bytes(self, f: int, r: int, text: str) -> bytes:
        """The file a path-only cell names, confined to the dataset directory unless allowed out."""
        base = Path(self.files[f]).parent
        if self.allow_outside:
            p = Path(text)
            return (p if p.is_absolute() else base / p).read_bytes()
        root = Path(self.root)
        where = f"{self.files[f]} row {r}"
        rel = confined_path(root, _from_root(root, base, text), where, what="image paths", fix=OUTSIDE_PATHS_FIX)
        return (root / Path(*rel.parts)).read_bytes()

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
        return HfReader(self.files, self.fmt, self.file_of[k], self.row[k], self.column, bad, self.root,
                        self.allow_outside)


@dataclass(frozen=True)
class HfListing:
    """One split's rows (ids in row order) with their labels and the reader."""

    ids: list[str]
    labels: list[int]  # -1 where the label is missing (then the row is in ``reader.bad``)
    reader: HfReader
    class_names: tuple[str, ...] | None  # from the ClassLabel feature, when recorded
    problems: list[str]
    skipped_files: list[str] = field(default_factory=list)  # "file: reason" of unreadable files left out


def list_hf(
    root: Path,
    split: str,
    source: str,
    *,
    image_column: str,
    label_column: str | None,
    allow_outside_paths: bool = False,
    skip_bad_files: bool = False,
) -> HfListing:
    """List one split of the dataset at ``root``; reads the label column and the path-only image cells.

    Raises:
        ConfigError: no pyarrow, no such source, no data files, a missing column, bad labels, an
            image path outside ``root`` (unless ``allow_outside_paths``), or a data file that
            cannot be read (unless ``skip_bad_files``).
    """
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ConfigError("hf: sources are read with pyarrow: pip install 'epcache[hf]' (or pyarrow)") from None
    files, fmt, info_dir = _data_files(root, split, source)
    kept: list[Path] = []
    labels: list[int] = []
    file_of: list[int] = []
    rows: list[int] = []
    unreadable: dict[int, str] = {}  # listed rows of a file whose footer is intact but whose data is not
    skipped_files: list[str] = []
    names: tuple[str, ...] | None = None
    for path in files:
        try:
            schema, num_rows = _schema(path, fmt)
        except _unreadable() as e:
            _refuse_unreadable(split, path, fmt, e, skip=skip_bad_files)
            skipped_files.append(f"{path.relative_to(root).as_posix()}: {_one_line(e)}")
            continue
        for col in (image_column, label_column):
            if col is not None and col not in schema.names:
                flag = "--image-column" if col == image_column else "--label-column"
                have = ", ".join(schema.names)
                raise ConfigError(f"split {split!r}: {path} has no column {col!r} (columns: {have}); pass {flag} NAME")
        if names is None and label_column is not None:
            names = _class_names(schema.metadata, info_dir, label_column)
        first = len(labels)
        try:
            # None: no label column (--masks derives the labels from the masks): every row labelled 0 here
            values = _labels(path, fmt, label_column) if label_column is not None else [0] * _num_rows(path, fmt)
            if not allow_outside_paths:
                for r, text in _path_cells(path, fmt, image_column):
                    confined_path(root, _from_root(root, path.parent, text), f"split {split!r}: {path} row {r}",
                                  what="image paths", fix=OUTSIDE_PATHS_FIX)
        except _unreadable() as e:
            _refuse_unreadable(split, path, fmt, e, skip=skip_bad_files)
            if num_rows is None:
                skipped_files.append(f"{path.relative_to(root).as_posix()}: {_one_line(e)}")
                continue
            values = [None] * num_rows  # the footer counts the rows: they keep their ids, skipped as bad
            unreadable.update((first + r, f"{path} cannot be read ({_one_line(e)})") for r in range(num_rows))
        labels += [-1 if v is None else v for v in values]
        file_of += [len(kept)] * len(values)
        rows += range(len(values))
        kept.append(path)
    if skipped_files:
        print(f"epcache: split {split!r}: left out {len(skipped_files)} unreadable file(s), recorded in the store's "
              f"extra/skipped_files: {'; '.join(skipped_files[:3])}", file=sys.stderr)
    if not labels:
        raise ConfigError(f"split {split!r}: {source!r} under {root} has no rows" +
                          (" that can be read" if skipped_files else ""))
    if not all(isinstance(v, int) for v in labels):
        raise ConfigError(f"split {split!r}: label column {label_column!r} is not integer (class indices 0..C-1)")
    width = max(8, len(str(len(labels) - 1)))
    prefix = "" if source.strip("./") == "" else source.strip("/").removeprefix("./") + "/"
    ids = [f"{prefix}{r:0{width}d}" for r in range(len(labels))]
    bad = {r: f"label {label_column!r} is missing (null)" for r, v in enumerate(labels) if v == -1}
    bad.update(unreadable)
    negative = [r for r, v in enumerate(labels) if v < -1]
    if negative:
        raise ConfigError(f"split {split!r}: row {negative[0]} has label {labels[negative[0]]}; labels are 0..C-1")
    reader = HfReader(tuple(str(p) for p in kept), fmt, np.asarray(file_of, dtype=np.int32),
                      np.asarray(rows, dtype=np.int64), image_column, bad, str(root), allow_outside_paths)
    problems = [f"{ids[r]}: {reason}" for r, reason in sorted(bad.items())]
    return HfListing(ids, labels, reader, names, problems, skipped_files)


def _unreadable() -> tuple[type[BaseException], ...]:
    """How pyarrow says a data file is truncated or corrupt (OSError: also unreadable on disk)."""
    import pyarrow as pa

    return (pa.ArrowException, OSError, EOFError)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _refuse_unreadable(split: str, path: Path, fmt: str, e: BaseException, *, skip: bool) -> None:
    """Refuse an unreadable data file unless its rows are to be skipped."""
    if not skip:
        raise ConfigError(
            f"split {split!r}: {path} cannot be read as {fmt} ({_one_line(e)}); the file is truncated or corrupt. "
            "Download or re-create it, or pass --on-bad-image skip to leave its rows out"
        ) from None


def _schema(path: Path, fmt: str) -> tuple[Any, int | None]:
    """The file's schema, and its row count when its footer records one (parquet)."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        return pf.schema_arrow, int(pf.metadata.num_rows)
    return _read_arrow(path, None).schema, None


def _num_rows(path: Path, fmt: str) -> int:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    return int(_read_arrow(path, None).num_rows)


def _labels(path: Path, fmt: str, column: str) -> list[Any]:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return list(pq.read_table(path, columns=[column]).column(column).to_pylist())
    return list(_read_arrow(path, [column]).column(column).to_pylist())


def _path_cells(path: Path, fmt: str, column: str) -> Iterator[tuple[int, str]]:
    """(row, path) of the file's image cells that hold a path and no bytes.

    Arrow files are memory-mapped, so this copies no image bytes. A parquet row group is read
    only when the statistics of its ``bytes`` field count missing values (or there are none).
    """
    import pyarrow as pa

    if fmt == "arrow":
        yield from _struct_paths(_read_arrow(path, [column]).column(column), 0)
        return
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    md = pf.metadata
    leaf = next((i for i in range(md.num_columns) if md.schema.column(i).path == f"{column}.bytes"), None)
    if leaf is None or not pa.types.is_struct(pf.schema_arrow.field(column).type):
        return  # raw bytes: no paths
    start = 0
    for g in range(md.num_row_groups):
        group = md.row_group(g)
        stats = group.column(leaf).statistics
        if stats is None or not stats.has_null_count or stats.null_count > 0:
            yield from _struct_paths(pf.read_row_group(g, columns=[column]).column(column), start)
        start += group.num_rows


def _struct_paths(col: Any, start: int) -> Iterator[tuple[int, str]]:
    import pyarrow as pa

    if not pa.types.is_struct(col.type) or {"bytes", "path"} - {f.name for f in col.type}:
        return
    b_at, p_at = col.type.get_field_index("bytes"), col.type.get_field_index("path")
    for chunk in col.chunks:
        fields = chunk.flatten()  # parent nulls folded in: a null cell has neither
        paths = fields[p_at]
        only = np.flatnonzero(fields[b_at].is_null().to_numpy(zero_copy_only=False)
                              & paths.is_valid().to_numpy(zero_copy_only=False))
        for i in only:
            text = paths[int(i)].as_py()
            if text:  # an empty path is a bad sample at read time, not a path to confine
                yield start + int(i), str(text)
        start += len(chunk)


def _from_root(root: Path, base: Path, text: str) -> str:
    """A cell's path (relative to its data file's directory ``base``) as a path relative to ``root``."""
    if PurePosixPath(text.replace("\\", "/")).is_absolute() or Path(text).is_absolute():
        return text
    prefix = base.relative_to(root).as_posix()
    return text if prefix == "." else f"{prefix}/{text}"


def _data_files(root: Path, split: str, source: str) -> tuple[list[Path], str, Path]:
    """The split's data files in order, their format, and where dataset_info.json may be."""
    rel = source.strip()
    if rel.startswith("/") or ".." in rel.replace("\\", "/").split("/"):
        raise ConfigError(f"split {split!r}: {source!r} must be relative to the dataset directory {root}")
    d = root / rel
    if d.is_dir():
        if (d / "state.json").is_file():
            state = json.loads((d / "state.json").read_text(encoding="utf-8"))
            names = [str(x["filename"]) for x in state.get("_data_files", [])]
            for name in names:  # datasets writes bare names; a data file out of the dataset is not read
                confined_path(root, _from_root(root, d, name), f"split {split!r}: {d}/state.json", what="data files")
            files = [d / name for name in names]
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
