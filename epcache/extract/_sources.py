"""Image sources: ImageFolder split directories or ``path,label`` CSV files under one data root,
WebDataset tar shards (``_wds``) or a Hugging Face dataset (``--data hf:/path``, ``_hf``).

Every split is listed in a deterministic order (sorted sample ids) and each sample id is its
path relative to the data root in POSIX form (shard/key for WebDataset, source/row for HF): the
id is what the store records, so it must not depend on the machine, the working directory or
the listing order of the file system.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np

from epcache.errors import ConfigError
from epcache.extract._confine import confined_path
from epcache.extract._hf import HF_PREFIX, list_hf
from epcache.extract._wds import DEFAULT_IMAGE_KEYS, is_shard_pattern, list_shards

__all__ = ["IMAGE_EXTENSIONS", "SourceOptions", "SplitSource", "data_location", "scan_splits"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
MAX_CLASSES = 1_000_000  # CSV labels are class indices; each class name is stored in the metadata


SourceKind = Literal["imagefolder", "csv", "webdataset", "hf"]


@dataclass(frozen=True)
class SourceOptions:
    """How to read WebDataset shards and HF tables; what to do with samples unusable at listing."""

    wds_image_key: str = DEFAULT_IMAGE_KEYS
    wds_label_key: str = "cls"
    image_column: str = "image"
    label_column: str = "label"
    on_bad_image: str = "error"
    allow_outside_paths: bool = False  # hf: path-only image cells may name files outside the dataset directory


@dataclass(frozen=True)
class SplitSource:
    """One split's samples in dataset order (sorted by id)."""

    name: str
    kind: SourceKind
    source: str  # as given: a subdirectory, a CSV file, a shard pattern or an HF split, under the data root
    ids: tuple[str, ...]  # path relative to the data root, POSIX
    labels: np.ndarray  # int64 [N]
    classes: tuple[str, ...]  # class names; label i is classes[i]
    root: Path  # data root (resolved), the base of every id
    reader: Any = None  # webdataset / hf: a loader.SampleReader giving each sample's bytes; None: files
    skipped_files: tuple[str, ...] = ()  # "file: reason" of HF files / damaged shards whose rows are not listed
    masks: tuple[tuple[str, str], ...] | None = None  # --masks: (mask path under the root, its sha256) per sample
    mask_reader: Any = None  # --masks of an hf: dataset: reads each row's mask cell; None: mask files

    def __len__(self) -> int:
        return len(self.ids)

    def path(self, index: int) -> Path:
        return self.root / self.ids[index]

    def where(self, index: int) -> str:
        """Where sample ``index`` is, for messages: its file, or its shard member / table row."""
        return str(self.path(index)) if self.reader is None else f"{self.ids[index]} in {self.reader.where(index)}"

    def images(self) -> Any:
        """What ViewDataset reads: the files' paths, or the reader."""
        return [self.path(i) for i in range(len(self))] if self.reader is None else self.reader

    def without(self, drop: set[str]) -> SplitSource:
        """The split minus the given ids (images skipped as unreadable)."""
        keep = [i for i, sid in enumerate(self.ids) if sid not in drop]
        return SplitSource(
            self.name,
            self.kind,
            self.source,
            tuple(self.ids[i] for i in keep),
            self.labels[keep],
            self.classes,
            self.root,
            None if self.reader is None else self.reader.subset(keep),
            self.skipped_files,
            None if self.masks is None else tuple(self.masks[i] for i in keep),
            None if self.mask_reader is None else self.mask_reader.subset(keep),
        )


def data_location(data: str | Path) -> tuple[str, str]:
    """(kind, location) of ``--data``: ("hf", dir), ("url", fsspec URL) or ("local", dir), resolved.

    A shard pattern given as ``--data`` stands for its directory (see ``scan_splits``).
    """
    text = str(data)
    if text.startswith(HF_PREFIX):
        return "hf", str(Path(text[len(HF_PREFIX) :]).expanduser().resolve())
    if is_shard_pattern(text):
        text = text.replace("\\", "/").rsplit("/", 1)[0] if "/" in text else "."
    if "://" in text and not text.startswith("file://"):
        return "url", text.rstrip("/")
    return "local", str(Path(text.removeprefix("file://")).expanduser().resolve())


def scan_splits(
    root: Path | str, splits: Mapping[str, str], *, options: SourceOptions | None = None
) -> dict[str, SplitSource]:
    """List every split. A value ending in ``.csv`` is a CSV file, anything else a subdirectory.

    ImageFolder splits share one class list, the sorted union of their class folders, so a
    label means the same class in every split. CSV labels are integers; class names are their
    decimal strings.

    Raises:
        ConfigError: missing root or split source, an empty split, CSV rows that are malformed
            or point outside the root, or ImageFolder and CSV splits mixed in one store.
    """
    options = options or SourceOptions()
    text = str(root)
    if text.startswith(HF_PREFIX) or is_shard_pattern(text) or any(is_shard_pattern(v) for v in splits.values()):
        return _scan_records(text, splits, options)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"data root {root} does not exist or is not a directory")
    if not splits:
        raise ConfigError("no splits given; pass e.g. --split train=train --split val=val")
    root = root.resolve()
    kinds = {name: ("csv" if src.lower().endswith(".csv") else "imagefolder") for name, src in splits.items()}
    if len(set(kinds.values())) > 1:
        raise ConfigError(
            f"splits mix ImageFolder directories and CSV files ({dict(splits)}); labels would not share "
            "one class list. Use one kind for every split of a store"
        )
    if "imagefolder" in kinds.values():
        listed = {name: _list_imagefolder(root, name, src) for name, src in splits.items()}
        classes = tuple(sorted({c for files in listed.values() for c in files}))
        index = {c: i for i, c in enumerate(classes)}
        out = {}
        for name, files in listed.items():
            pairs = sorted((sid, index[c]) for c, ids in files.items() for sid in ids)
            out[name] = _make(root, name, "imagefolder", splits[name], pairs, classes)
        return out
    rows = {name: _read_csv(root, name, src) for name, src in splits.items()}
    num_classes = 1 + max(label for pairs in rows.values() for _, label in pairs)
    classes = tuple(str(i) for i in range(num_classes))
    return {name: _make(root, name, "csv", splits[name], sorted(pairs), classes) for name, pairs in rows.items()}


def _scan_records(data: str, splits: Mapping[str, str], options: SourceOptions) -> dict[str, SplitSource]:
    """WebDataset or HF splits: labels are integers, class names shared over the splits."""
    kind, loc = data_location(data)
    if is_shard_pattern(data) and not data.startswith(HF_PREFIX):  # --data DIR/train-{0..9}.tar: one split
        if dict(splits) != {"train": "train", "val": "val"}:
            raise ConfigError(f"--data {data} is a shard pattern, which makes one split 'train'; for named splits "
                              f"pass the shards' directory: --data {loc} --split NAME=PATTERN.tar")
        splits = {"train": data.replace("\\", "/").rsplit("/", 1)[-1]}
    if kind == "hf":
        if not Path(loc).is_dir():
            raise ConfigError(f"--data {data}: dataset directory {loc} does not exist")
    elif not all(is_shard_pattern(v) for v in splits.values()):
        raise ConfigError(f"splits mix WebDataset shards and other sources ({dict(splits)}); give every split "
                          "as a shard pattern (NAME=train-{000000..000099}.tar)")
    listed: dict[str, Any] = {}
    for name, src in splits.items():
        if kind == "hf":
            listed[name] = list_hf(Path(loc), name, src, image_column=options.image_column,
                                   label_column=options.label_column, allow_outside_paths=options.allow_outside_paths,
                                   skip_bad_files=options.on_bad_image == "skip")
        else:
            listed[name] = list_shards(loc, name, src, image_keys=options.wds_image_key,
                                       label_key=options.wds_label_key)
        problems = listed[name].problems
        if problems and options.on_bad_image != "skip":
            shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
            raise ConfigError(f"split {name!r}: {len(problems)} sample(s) cannot be used: {shown}. Fix the data, "
                              "pass --on-bad-image skip to leave them out, or name the right keys/columns "
                              "(--wds-image-key, --wds-label-key, --image-column, --label-column)")
    top = max(max(x.labels) for x in listed.values())
    if top >= MAX_CLASSES:
        raise ConfigError(f"label {top} is too large; labels are class indices 0..C-1 with C at most {MAX_CLASSES}")
    named = [x.class_names for x in listed.values() if getattr(x, "class_names", None)]
    classes = named[0] if named and len(named[0]) > top else tuple(str(i) for i in range(top + 1))
    src_kind: SourceKind = "hf" if kind == "hf" else "webdataset"
    return {
        name: SplitSource(name, src_kind, splits[name], tuple(x.ids),
                          np.asarray([max(v, 0) for v in x.labels], dtype=np.int64), classes, Path(loc), x.reader,
                          tuple(x.skipped_files))
        for name, x in listed.items()
    }


def _make(
    root: Path,
    name: str,
    kind: SourceKind,
    source: str,
    pairs: list[tuple[str, int]],
    classes: tuple[str, ...],
) -> SplitSource:
    ids = tuple(sid for sid, _ in pairs)
    labels = np.asarray([label for _, label in pairs], dtype=np.int64)
    return SplitSource(name, kind, source, ids, labels, classes, root)


def _split_dir(root: Path, name: str, src: str) -> tuple[Path, PurePosixPath]:
    """The split directory and its logical path relative to the root (the prefix of its ids)."""
    rel = PurePosixPath(src.replace("\\", "/"))
    if rel.is_absolute() or Path(src).is_absolute() or ".." in rel.parts:
        raise ConfigError(f"split {name!r}: {src!r} must be a subdirectory of the data root {root} (relative, no '..')")
    d = root / Path(*rel.parts)
    if not d.is_dir():
        raise ConfigError(f"split {name!r}: directory {d} does not exist (data root {root})")
    return d, rel


def _list_imagefolder(root: Path, name: str, src: str) -> dict[str, list[str]]:
    """class name -> sample ids; class folders are the split directory's subdirectories.

    Symlinks inside an ImageFolder are followed (datasets are often assembled from links to a
    shared pool); ids are the logical paths under the root, not the link targets.
    """
    d, rel = _split_dir(root, name, src)
    files: dict[str, list[str]] = {}
    for cls_dir in sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")):
        _refuse_loop(cls_dir, d, name)  # `train/all -> .` would be a fake class holding every image
        ids = []
        for dirpath, dirnames, filenames in os.walk(cls_dir, followlinks=True):
            here = Path(dirpath)
            for x in dirnames:
                _refuse_loop(here / x, here, name)  # a link to an ancestor: os.walk would follow it forever
            dirnames[:] = sorted(x for x in dirnames if not x.startswith("."))
            sub = here.relative_to(cls_dir)
            for fn in filenames:
                if fn.lower().endswith(IMAGE_EXTENSIONS) and not fn.startswith("."):
                    ids.append((rel / cls_dir.name / PurePosixPath(*sub.parts) / fn).as_posix())
        files[cls_dir.name] = ids
    if not any(files.values()):
        raise ConfigError(
            f"split {name!r}: no images under {d} (ImageFolder layout: {src}/<class>/<image>, "
            f"extensions {', '.join(IMAGE_EXTENSIONS)})"
        )
    return files


def _refuse_loop(path: Path, parent: Path, split: str) -> None:
    """Refuse a directory symlink that leads back to ``parent`` or one of its ancestors.

    Following it would list the same images again under ever longer ids (8 images became 168)
    or, at the class level, add a class that holds every image of the split.

    Raises:
        ConfigError: ``path`` is such a loop (the message names it and its target).
    """
    if not path.is_symlink():
        return
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError):  # a link to itself or a chain that never ends
        raise ConfigError(
            f"split {split!r}: {path} is a symlink loop (it never resolves); remove it from the dataset"
        ) from None
    real_parent = parent.resolve()
    if real_parent == target or real_parent.is_relative_to(target):
        raise ConfigError(
            f"split {split!r}: {path} is a symlink loop: it leads to {target}, which contains it, so its "
            "images would be listed again and again (or as a fake class). Remove the link"
        )


def csv_lines(root: Path, name: str, src: str, *, expected: str) -> tuple[Path, list[list[str]]]:
    """The CSV split file ``src`` (absolute or under ``root``) and its non-blank rows; ``expected`` names the
    row format in the error messages (e.g. ```path,label```).

    Raises:
        ConfigError: the file is missing, not UTF-8, or not CSV.
    """
    csv_path = Path(src) if Path(src).is_absolute() else root / src
    if not csv_path.is_file():
        raise ConfigError(f"split {name!r}: CSV file {csv_path} does not exist")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            return csv_path, [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"split {name!r}: CSV file {csv_path} is not UTF-8 (byte {e.start}: {e.reason}); re-save it as UTF-8"
        ) from None
    except csv.Error as e:
        raise ConfigError(
            f"split {name!r}: CSV file {csv_path} cannot be parsed ({e}); expected {expected} lines"
        ) from None


def _read_csv(root: Path, name: str, src: str) -> list[tuple[str, int]]:
    csv_path, rows = csv_lines(root, name, src, expected="`path,label`")
    if rows and not _is_int(rows[0][-1].strip() if rows[0] else ""):
        rows = rows[1:]  # header
    if not rows:
        raise ConfigError(f"split {name!r}: CSV file {csv_path} has no rows (expected `path,label` lines)")
    pairs: list[tuple[str, int]] = []
    seen: set[str] = set()
    for lineno, row in enumerate(rows, start=1):
        where = f"split {name!r}: {csv_path} row {lineno}"
        if len(row) != 2 or not _is_int(row[1].strip()):
            raise ConfigError(f"{where}: expected `path,label` with an integer label, got {row}")
        rel, label = row[0].strip(), int(row[1])
        if label < 0:
            raise ConfigError(f"{where}: label {label} is negative; labels are 0..C-1")
        if label >= MAX_CLASSES:  # C class names go into the metadata: 10,000,000 made a 458 MB zarr.json
            raise ConfigError(
                f"{where}: label {label} is too large; labels are class indices 0..C-1 with C at most "
                f"{MAX_CLASSES}. Remap the labels to 0..C-1"
            )
        sid = _safe_relative(root, rel, where)
        if sid in seen:
            raise ConfigError(f"{where}: {sid} is listed twice")
        seen.add(sid)
        pairs.append((sid, label))
    return pairs


def _safe_relative(root: Path, rel: str, where: str) -> str:
    """A CSV path as a sample id: confined to the data root (``_confine``) and naming a file."""
    p = confined_path(root, rel, where, what="CSV paths")
    full = root / Path(*p.parts)
    if not full.is_file():
        raise ConfigError(f"{where}: image {full} does not exist")
    return p.as_posix()


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True
