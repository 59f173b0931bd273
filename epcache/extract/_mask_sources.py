"""Segmentation sources (``epcache extract --masks``): each image with a single-channel mask of class indices.

Three kinds of source (cache_layout.md §3.6 states them):

- a split directory ``<split>/images/<name>.<ext>`` beside ``<split>/masks/<name>.png``;
- a CSV split of ``path,mask_path`` rows, optionally ``path,mask_path,label`` (an optional header row
  whose first cell is ``path``);
- an ``hf:`` dataset whose mask column (``--mask-column``) holds each row's mask as its image column
  holds the image (no label column needed).

Class names come from ``classes.txt`` at the data root (one per line), else ``class_<i>`` up to the
largest index found. Every mask is decoded once here, before anything is written: its size must be
its image's, its values class indices or the ignore index; the image-level label a store needs is
the CSV's, else the most frequent class of the mask other than 0 (background) and the ignore index
(0 when the mask holds nothing else). Each mask file's sha256 enters the split's fingerprint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from epcache.errors import ConfigError
from epcache.extract._confine import confined_path
from epcache.extract._hf import HF_PREFIX, list_hf
from epcache.extract._mask_geometry import load_mask
from epcache.extract._sources import IMAGE_EXTENSIONS, MAX_CLASSES, SourceOptions, SplitSource, csv_lines
from epcache.store.layout.dense import DenseInfo, mask_dtype

__all__ = ["CLASSES_FILE", "scan_mask_splits"]

CLASSES_FILE = "classes.txt"
_HEADER = ("path", "image", "image_path")


@dataclass(frozen=True)
class _Row:
    sid: str  # image id, relative to the root
    mask: str  # mask path, relative to the root
    label: int | None  # the CSV's image-level label, if given


def scan_mask_splits(
    root: Path | str,
    splits: Mapping[str, str],
    *,
    ignore_index: int,
    size: tuple[int, int],
    hf: SourceOptions | None = None,
    mask_column: str = "mask",
) -> tuple[dict[str, SplitSource], DenseInfo]:
    """Every split with its masks checked, and what the mask values mean.

    Raises:
        ConfigError: an unsupported data root, a missing image or mask, a mask whose size differs from
            its image's or that is not single-channel, a class index outside the class list.
    """
    text = str(root)
    if text.startswith(HF_PREFIX):
        return _scan_hf(text, splits, ignore_index=ignore_index, size=size, options=hf or SourceOptions(),
                        mask_column=mask_column)
    if "://" in text or any(v.endswith(".tar") or "{" in v for v in splits.values()):
        raise ConfigError("--masks reads masks from a local data root (split directories with images/ and masks/, "
                          "or CSV files of path,mask_path rows) or an hf: dataset with a mask column")
    base = Path(text).expanduser()
    if not base.is_dir():
        raise ConfigError(f"data root {base} does not exist or is not a directory")
    base = base.resolve()
    if not splits:
        raise ConfigError("no splits given; pass e.g. --split train=train --split val=val")
    rows = {name: (_read_csv(base, name, src) if src.lower().endswith(".csv") else _list_dir(base, name, src))
            for name, src in splits.items()}
    checked = {name: [_check(name, _read(base / r.mask, name), str(base / r.mask), base / r.sid, ignore_index)
                      for r in listed] for name, listed in rows.items()}
    names = _names(base, checked, ignore_index)
    for name, listed in rows.items():
        for r, (_, m, _) in zip(listed, checked[name], strict=True):
            _check_class(name, str(base / r.mask), m, names, base, ignore_index)
    out: dict[str, SplitSource] = {}
    for name, listed in rows.items():
        labels = []
        for r, (_, _, label) in zip(listed, checked[name], strict=True):
            if r.label is not None and not 0 <= r.label < len(names):
                raise ConfigError(f"split {name!r}: the CSV label {r.label} of {r.sid} is outside 0..{len(names) - 1}")
            labels.append(r.label if r.label is not None else label)
        order = sorted(range(len(listed)), key=lambda i: listed[i].sid)
        out[name] = SplitSource(
            name, "csv" if splits[name].lower().endswith(".csv") else "imagefolder", splits[name],
            tuple(listed[i].sid for i in order), np.asarray([labels[i] for i in order], dtype=np.int64), names, base,
            masks=tuple((listed[i].mask, checked[name][i][0]) for i in order),
        )
    info = DenseInfo(names, ignore_index, mask_dtype(len(names), ignore_index), size)
    return out, info


def _names(root: Path, checked: Mapping[str, list[tuple[str, int, int]]], ignore_index: int) -> tuple[str, ...]:
    """The class list: ``classes.txt``, else ``class_<i>`` up to the largest index; the ignore index is none of them."""
    names = _class_names(root)
    if names is None:
        top = max((m for per in checked.values() for _, m, _ in per), default=0)
        if top >= MAX_CLASSES:
            raise ConfigError(f"mask class index {top} is too large (at most {MAX_CLASSES} classes)")
        names = tuple(f"class_{i}" for i in range(top + 1))
    if ignore_index < len(names):
        raise ConfigError(f"the ignore index {ignore_index} is a class index ({len(names)} classes); pass "
                          f"--mask-ignore-index {65535 if len(names) > 255 else 255}")
    return names


def _check_class(split: str, where: str, top: int, names: tuple[str, ...], root: Path, ignore_index: int) -> None:
    if top >= len(names):
        raise ConfigError(
            f"split {split!r}: mask {where} holds class index {top}, but there are {len(names)} classes "
            f"({CLASSES_FILE} at the data root, or class_<i>); add the class to {root / CLASSES_FILE} or set "
            f"those pixels to the ignore index {ignore_index}"
        )


def _read(path: Path, split: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"split {split!r}: cannot read the mask {path} ({e})") from None


def _check(split: str, data: bytes, where: str, image: Path | bytes, ignore_index: int) -> tuple[str, int, int]:
    """(sha256 of the mask file, its largest class index, its image-level label); refuses a bad pair."""
    import io

    from PIL import Image

    try:
        mask = np.asarray(load_mask(data))
    except (OSError, ValueError, SyntaxError) as e:
        raise ConfigError(f"split {split!r}: cannot read the mask {where} ({e}); masks are single-channel PNGs of "
                          "class indices") from None
    image_where = f"of the mask {where}" if isinstance(image, bytes) else str(image)
    try:
        with Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as im:
            width, height = im.size
    except (OSError, ValueError, SyntaxError) as e:
        raise ConfigError(f"split {split!r}: cannot read the image {image_where} ({e})") from None
    if mask.shape != (height, width):
        raise ConfigError(
            f"split {split!r}: mask {where} is {mask.shape[1]}x{mask.shape[0]} but its image {image_where} is "
            f"{width}x{height}; save the mask at the image's size"
        )
    values = mask[mask != ignore_index].astype(np.int64)
    if values.size and values.min() < 0:
        raise ConfigError(f"split {split!r}: mask {where} holds a negative value")
    top = int(values.max()) if values.size else 0
    counts = np.bincount(values, minlength=1) if values.size else np.zeros(1, np.int64)
    counts[0] = 0  # background never names the image
    label = int(counts.argmax()) if counts.any() else 0
    return hashlib.sha256(data).hexdigest(), top, label


def _scan_hf(
    data: str, splits: Mapping[str, str], *, ignore_index: int, size: tuple[int, int], options: SourceOptions,
    mask_column: str,
) -> tuple[dict[str, SplitSource], DenseInfo]:
    """hf: splits whose ``mask_column`` holds each row's mask ({bytes, path} structs or bytes, like images)."""
    loc = Path(data[len(HF_PREFIX) :]).expanduser().resolve()
    if not loc.is_dir():
        raise ConfigError(f"--data {data}: dataset directory {loc} does not exist")
    listed = {name: list_hf(loc, name, src, image_column=options.image_column, label_column=None,
                            allow_outside_paths=options.allow_outside_paths) for name, src in splits.items()}
    readers, checked = {}, {}
    for name, x in listed.items():
        if x.problems:
            raise ConfigError(f"split {name!r}: {len(x.problems)} row(s) cannot be used: {x.problems[0]}")
        readers[name] = masks = dataclasses.replace(x.reader, column=mask_column, _cache={})
        checked[name] = []
        for i in range(len(x.ids)):
            try:
                mask_data, image = masks.read(i), x.reader.read(i)
            except (OSError, ValueError, KeyError) as e:
                raise ConfigError(f"split {name!r}: row {x.ids[i]} has no readable mask in column {mask_column!r} "
                                  f"({e}); pass --mask-column NAME") from None
            checked[name].append(_check(name, mask_data, masks.where(i), image, ignore_index))
    names = _names(loc, checked, ignore_index)
    out = {}
    for name, x in listed.items():
        for i, (_, m, _) in enumerate(checked[name]):
            _check_class(name, readers[name].where(i), m, names, loc, ignore_index)
        out[name] = SplitSource(
            name, "hf", splits[name], tuple(x.ids), np.asarray([c[2] for c in checked[name]], dtype=np.int64), names,
            loc, x.reader, masks=tuple((readers[name].where(i), c[0]) for i, c in enumerate(checked[name])),
            mask_reader=readers[name],
        )
    return out, DenseInfo(names, ignore_index, mask_dtype(len(names), ignore_index), size)


def _class_names(root: Path) -> tuple[str, ...] | None:
    path = root / CLASSES_FILE
    if not path.is_file():
        return None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} cannot be read as UTF-8 text ({e}); one class name per line") from None
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines or any(not x.strip() for x in lines):
        raise ConfigError(f"{path} must hold one non-empty class name per line (line i names class index i)")
    return tuple(x.strip() for x in lines)


def _list_dir(root: Path, name: str, src: str) -> list[_Row]:
    rel = PurePosixPath(src.replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts:
        raise ConfigError(f"split {name!r}: {src!r} must be a subdirectory of the data root {root} (relative, no '..')")
    images, masks = root / Path(*rel.parts) / "images", root / Path(*rel.parts) / "masks"
    if not images.is_dir() or not masks.is_dir():
        raise ConfigError(f"split {name!r}: --masks expects {images} and {masks} (<split>/images/<name>.<ext> beside "
                          "<split>/masks/<name>.png)")
    rows = []
    for dirpath, dirnames, filenames in os.walk(images, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        sub = PurePosixPath(*Path(dirpath).relative_to(images).parts)
        for fn in sorted(filenames):
            if fn.startswith(".") or not fn.lower().endswith(IMAGE_EXTENSIONS):
                continue
            mask = rel / "masks" / sub / (Path(fn).stem + ".png")
            if not (root / Path(*mask.parts)).is_file():
                raise ConfigError(f"split {name!r}: image {images / sub / fn} has no mask {root / Path(*mask.parts)}; "
                                  "add it (a PNG of class indices, same name) or remove the image")
            rows.append(_Row((rel / "images" / sub / fn).as_posix(), mask.as_posix(), None))
    if not rows:
        raise ConfigError(f"split {name!r}: no images under {images}")
    return rows


def _read_csv(root: Path, name: str, src: str) -> list[_Row]:
    path, lines = csv_lines(root, name, src, expected="`path,mask_path[,label]`")
    if lines and lines[0][0].strip().lower() in _HEADER:
        lines = lines[1:]
    if not lines:
        raise ConfigError(f"split {name!r}: CSV file {path} has no rows (expected `path,mask_path[,label]` lines)")
    rows, seen = [], set()
    for lineno, cells in enumerate(lines, start=1):
        where = f"split {name!r}: {path} row {lineno}"
        cells = [c.strip() for c in cells]
        if len(cells) not in (2, 3) or (len(cells) == 3 and not cells[2].lstrip("-").isdigit()):
            raise ConfigError(f"{where}: expected `path,mask_path` or `path,mask_path,label`, got {cells}")
        sid = confined_path(root, cells[0], where, what="CSV paths").as_posix()
        mask = confined_path(root, cells[1], where, what="CSV mask paths").as_posix()
        for p, what in ((sid, "image"), (mask, "mask")):
            if not (root / p).is_file():
                raise ConfigError(f"{where}: {what} {root / p} does not exist")
        if sid in seen:
            raise ConfigError(f"{where}: {sid} is listed twice")
        seen.add(sid)
        rows.append(_Row(sid, mask, int(cells[2]) if len(cells) == 3 else None))
    return rows
