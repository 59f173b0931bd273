"""WebDataset tar shards as a split: listed once, then read member by member at recorded offsets.

A sample is the group of members sharing a key (the member path up to the first dot of its
file name); its image is the first member whose extension is one of the image keys, its label
the integer text of the label-key member. The sample id is ``<shard path>/<key>``, the shard
path relative to the data root, so it does not depend on the machine or the URL scheme.

Listing walks every tar header once (``tarfile`` over ``fsspec.open``): on a local disk that is
one small read per member (ImageNet's 1.28M samples: 2.6M headers, tens of seconds); a remote
shard is read through once in full (fsspec's read-ahead). Each image member's data offset and
size are recorded, so workers (and ``verify --repair``, ``epcache attention``) read exactly
that byte range of one shard, in any order, without scanning again.

A member name that occurs twice in one shard (the same key and extension: ``tar -r`` appends,
or two writers' outputs concatenated) makes its sample ambiguous, so the sample is unusable,
as WebDataset's own reader refuses it: named at listing, or skipped with ``--on-bad-image skip``.
"""

from __future__ import annotations

import os
import posixpath
import re
import tarfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from epcache.errors import ConfigError

__all__ = ["DEFAULT_IMAGE_KEYS", "TarReader", "expand_braces", "is_shard_pattern", "join_location", "list_shards"]

DEFAULT_IMAGE_KEYS = "jpg;jpeg;png;webp"
MAX_SHARDS = 1_000_000  # a brace range of more shards than this is a typo ({0..99999999})
_BRACE = re.compile(r"\{([^{}]*)\}")


def is_shard_pattern(source: str) -> bool:
    """A split source naming tar shards (``train-{000000..000146}.tar``, ``a.tar``)."""
    return source.strip().lower().endswith(".tar")


def expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` -> a-000.tar, a-001.tar, a-002.tar; ``{a,b}`` lists; several groups multiply.

    Numeric ranges keep the zero padding of their first bound, as WebDataset's ``braceexpand``.

    Raises:
        ConfigError: a malformed range or more than ``MAX_SHARDS`` shards.
    """
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    body = m.group(1)
    rng = re.fullmatch(r"\s*(\d+)\s*\.\.\s*(\d+)\s*", body)
    if rng:
        lo, hi = int(rng.group(1)), int(rng.group(2))
        if hi < lo or hi - lo >= MAX_SHARDS:
            raise ConfigError(f"shard pattern {pattern!r}: range {{{body}}} must go up and hold at most {MAX_SHARDS}")
        width = len(rng.group(1).strip())
        choices = [str(i).zfill(width) for i in range(lo, hi + 1)]
    elif ".." in body:
        raise ConfigError(f"shard pattern {pattern!r}: {{{body}}} is not a range of integers like {{000000..001281}}")
    else:
        choices = body.split(",")
    out = [pattern[: m.start()] + c + rest for c in choices for rest in expand_braces(pattern[m.end() :])]
    if len(out) > MAX_SHARDS:
        raise ConfigError(f"shard pattern {pattern!r} names {len(out)} shards, more than {MAX_SHARDS}")
    return out


def join_location(root: str, rel: str) -> str:
    """``rel`` under a data root that is a local directory or an fsspec URL."""
    if "://" in root:
        return root.rstrip("/") + "/" + rel
    return os.path.join(root, *rel.split("/"))


@dataclass
class TarReader:
    """Reads sample ``i``'s image member from its shard (picklable; open files are per process)."""

    shards: tuple[str, ...]  # locations (paths or URLs)
    shard_of: np.ndarray  # int32 [N]
    offset: np.ndarray  # int64 [N] data offset of the image member
    size: np.ndarray  # int64 [N]
    members: tuple[str, ...]  # image member name per sample (messages)
    bad: dict[int, str] = field(default_factory=dict)  # samples unusable since listing, with the reason
    _files: dict[tuple[int, int], Any] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.members)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_files": {}}

    def where(self, index: int) -> str:
        return f"{self.shards[int(self.shard_of[index])]} (member {self.members[index]})"

    def read(self, index: int) -> bytes:
        if index in self.bad:
            raise ValueError(self.bad[index])
        import fsspec

        shard = int(self.shard_of[index])
        key = (os.getpid(), shard)  # a file opened before a fork must not share its offset with the child
        f = self._files.get(key)
        if f is None:
            if len(self._files) >= 16:
                for old in self._files.values():
                    old.close()
                self._files.clear()
            f = self._files[key] = fsspec.open(self.shards[shard], "rb").open()
        size = int(self.size[index])
        f.seek(int(self.offset[index]))
        data: bytes = f.read(size)
        if len(data) != size:
            raise OSError(f"shard {self.shards[shard]} is truncated: member {self.members[index]} needs {size} bytes, "
                          f"{len(data)} are there")
        return data

    def subset(self, keep: list[int]) -> TarReader:
        new_index = {old: new for new, old in enumerate(keep)}
        bad = {new_index[i]: r for i, r in self.bad.items() if i in new_index}
        k = np.asarray(keep, dtype=np.int64)
        return TarReader(self.shards, self.shard_of[k], self.offset[k], self.size[k],
                         tuple(self.members[i] for i in keep), bad)


@dataclass(frozen=True)
class ShardListing:
    """One split's samples from its shards, sorted by id."""

    ids: list[str]
    labels: list[int]  # -1 where the sample has no usable label (then it is in ``reader.bad``)
    reader: TarReader
    problems: list[str]  # one line per unusable sample or truncated shard, for the error message
    skipped_files: list[str] = field(default_factory=list)  # truncated shards: samples after the cut are unlisted


def list_shards(root: str, split: str, pattern: str, *, image_keys: str, label_key: str) -> ShardListing:
    """List the samples of the shards ``pattern`` names under ``root`` (one pass over the headers).

    Raises:
        ConfigError: a shard that is missing or not a tar file, a pattern climbing out of the root.
    """
    rel_pattern = pattern.strip().replace("\\", "/")
    if rel_pattern.startswith("/") or "://" in rel_pattern or ".." in rel_pattern.split("/"):
        raise ConfigError(f"split {split!r}: shard pattern {pattern!r} must be relative to the data root {root} "
                          "(no leading '/', no '..'); pass the shards' directory as --data")
    exts = tuple(e.strip().lstrip(".").lower() for e in image_keys.split(";") if e.strip())
    if not exts:
        raise ConfigError("--wds-image-key is empty; give extensions like jpg;png")
    label_ext = label_key.strip().lstrip(".").lower()
    rows: list[tuple[str, int, int, int, str, int, str]] = []  # id, shard, offset, size, member, label, problem
    shards = expand_braces(rel_pattern)
    problems: list[str] = []
    damaged: list[str] = []
    for s, rel in enumerate(shards):
        samples, note = _scan_shard(join_location(root, rel), split, exts, label_ext)
        if note:
            problems.append(note)
            # recorded in the store: the shard's name relative to the data root, never the host path
            damaged.append(f"{rel}: {note.replace(join_location(root, rel), rel)}")
        for key, (offset, size, member, label, problem) in sorted(samples.items()):
            rows.append((f"{rel}/{key}", s, offset, size, member, label, problem))
    if not rows:
        raise ConfigError(f"split {split!r}: no samples with an image ({image_keys}) in {len(shards)} shard(s) "
                          f"{pattern!r} under {root}; check --wds-image-key")
    rows.sort()
    bad = {i: r[6] for i, r in enumerate(rows) if r[6]}
    problems += [f"{rows[i][0]}: {reason}" for i, reason in bad.items()]
    reader = TarReader(
        tuple(join_location(root, rel) for rel in shards),
        np.asarray([r[1] for r in rows], dtype=np.int32),
        np.asarray([r[2] for r in rows], dtype=np.int64),
        np.asarray([r[3] for r in rows], dtype=np.int64),
        tuple(r[4] for r in rows),
        bad,
    )
    return ShardListing([r[0] for r in rows], [r[5] for r in rows], reader, problems, damaged)


def _scan_shard(
    location: str, split: str, exts: tuple[str, ...], label_ext: str
) -> tuple[dict[str, tuple[int, int, str, int, str]], str]:
    """key -> (image offset, size, member, label or -1, problem or ""), and a note if the shard is cut short."""
    import fsspec

    images: dict[str, tuple[int, int, int, str]] = {}  # key -> (priority, offset, size, member)
    labels: dict[str, int | str] = {}  # key -> label, or the reason it is unusable
    keys: list[str] = []
    names: set[str] = set()  # member names seen, to find one given twice
    twice: dict[str, str] = {}  # key -> the reason its sample is ambiguous
    note = ""
    try:
        with fsspec.open(location, "rb") as f:
            end = f.size if getattr(f, "size", None) is not None else f.seek(0, 2)
            f.seek(0)
            try:
                with tarfile.open(fileobj=f, mode="r:") as tf:
                    for m in tf:
                        if not m.isfile():
                            continue
                        d, base = posixpath.split(m.name)
                        stem, dot, ext = base.partition(".")
                        if not dot or stem == "" or base.startswith("._"):
                            continue
                        key = posixpath.join(d, stem)
                        if key not in images and key not in labels and key not in twice:
                            keys.append(key)
                        if m.name in names:
                            twice.setdefault(key, f"member {m.name} occurs twice in shard {location}; keep one copy")
                        names.add(m.name)
                        ext = ext.lower()
                        if ext in exts:
                            prio = exts.index(ext)
                            if key not in images or prio < images[key][0]:
                                images[key] = (prio, m.offset_data, m.size, m.name)
                        elif ext == label_ext:
                            labels[key] = _parse_label(tf, m, end)
            except tarfile.ReadError as e:
                if not keys:
                    raise ConfigError(f"split {split!r}: {location} is not a tar file ({e})") from None
                note = f"shard {location} is truncated or damaged after member {keys[-1]!r} ({e})"
    except FileNotFoundError:
        raise ConfigError(f"split {split!r}: shard {location} does not exist") from None
    out: dict[str, tuple[int, int, str, int, str]] = {}
    for key in keys:
        if key not in images:
            if key in labels or key in twice:  # a label without an image: only the label was kept, or the shard is cut
                out[key] = (0, 0, key, -1, twice.get(key) or f"no image member (tried .{', .'.join(exts)})")
            continue
        _, offset, size, member = images[key]
        label = labels.get(key, f"no .{label_ext} member (the label key; --wds-label-key)")
        problem = label if isinstance(label, str) else ""
        if offset + size > end:
            problem = f"the shard is truncated inside {member}"
        problem = twice.get(key, problem)
        out[key] = (offset, size, member, label if isinstance(label, int) else -1, problem)
    return out, note


def _parse_label(tf: tarfile.TarFile, m: tarfile.TarInfo, end: int) -> int | str:
    if m.offset_data + m.size > end:
        return f"the shard is truncated inside {m.name}"
    fobj = tf.extractfile(m)
    text = fobj.read(64).decode("utf-8", "replace").strip() if fobj is not None else ""
    try:
        value = int(text)
    except ValueError:
        return f"label member {m.name} holds {text[:20]!r}, not an integer"
    return value if value >= 0 else f"label member {m.name} holds {value}; labels are 0..C-1"
