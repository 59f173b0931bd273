"""Shared helpers of the WebDataset / Hugging Face source tests: the same images in three layouts.

Every writer takes an ImageFolder split in its sorted id order (the order epcache lists it) and
writes the same image bytes and labels in that order, so a store extracted from any layout has
the same rows in the same places: tokens must be byte-identical, only the ids differ.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from epcache.extract._sources import scan_splits


def imagefolder_samples(root: Path, split: str) -> tuple[list[tuple[bytes, str, int]], tuple[str, ...]]:
    """(image bytes, extension, label) in epcache's order, and the class names."""
    src = scan_splits(root, {split: split})[split]
    samples = [(src.path(i).read_bytes(), src.path(i).suffix.lstrip("."), int(src.labels[i])) for i in range(len(src))]
    return samples, src.classes


def add_member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def write_shards(root: Path, split: str, out: Path, *, per_shard: int = 5, prefix: str | None = None) -> str:
    """WebDataset shards ``<prefix>-000000.tar ...`` of an ImageFolder split; returns the brace pattern."""
    samples, _ = imagefolder_samples(root, split)
    prefix = prefix or split
    out.mkdir(parents=True, exist_ok=True)
    shards = (len(samples) + per_shard - 1) // per_shard
    for s in range(shards):
        with tarfile.open(out / f"{prefix}-{s:06d}.tar", "w") as tf:
            for j in range(s * per_shard, min(len(samples), (s + 1) * per_shard)):
                data, ext, label = samples[j]
                add_member(tf, f"{j:06d}.{ext}", data)
                add_member(tf, f"{j:06d}.cls", str(label).encode())
                add_member(tf, f"{j:06d}.json", b"{}")  # other members of a sample are ignored
    return f"{prefix}-{{000000..{shards - 1:06d}}}.tar"


def _table(root: Path, split: str) -> object:
    import pyarrow as pa

    samples, _ = imagefolder_samples(root, split)
    image = pa.array([{"bytes": d, "path": f"{j}.{e}"} for j, (d, e, _) in enumerate(samples)],
                     type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    return pa.table({"image": image, "label": pa.array([lab for _, _, lab in samples], type=pa.int64())})


def write_parquet(root: Path, split: str, out: Path, *, files: int = 2, row_group: int = 3) -> Path:
    """A directory of parquet files (rows split over ``files``), datasets' Image struct column."""
    import pyarrow.parquet as pq

    table = _table(root, split)
    out.mkdir(parents=True, exist_ok=True)
    n = table.num_rows  # type: ignore[attr-defined]
    step = (n + files - 1) // files
    for k in range(files):
        pq.write_table(table.slice(k * step, step), out / f"{split}-{k:05d}-of-{files:05d}.parquet",  # type: ignore[attr-defined]
                       row_group_size=row_group)
    return out


def write_save_to_disk(root: Path, split: str, out: Path) -> Path:
    """What ``datasets.Dataset.save_to_disk`` writes: an Arrow IPC stream, state.json, dataset_info.json."""
    import pyarrow as pa

    table = _table(root, split)
    _, classes = imagefolder_samples(root, split)
    out.mkdir(parents=True, exist_ok=True)
    sink = pa.OSFile(str(out / "data-00000-of-00001.arrow"), "wb")
    with sink, pa.ipc.new_stream(sink, table.schema) as writer:  # type: ignore[attr-defined]
        writer.write_table(table)
    state = {"_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_fingerprint": "0", "_split": split}
    (out / "state.json").write_text(json.dumps(state))
    info = {"features": {"image": {"_type": "Image"}, "label": {"_type": "ClassLabel", "names": list(classes)}}}
    (out / "dataset_info.json").write_text(json.dumps(info))
    return out
