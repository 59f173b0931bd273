"""WebDataset shards whose members are ambiguous or cut: refused naming shard and key, or skipped and recorded.

A member name given twice in one shard (``tar -r`` appends, concatenated writers) leaves its
sample's image or label ambiguous, so the sample is unusable, as WebDataset's own reader refuses
it. A shard cut short is recorded in the store's ``extra/skipped_files`` when skipping.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from extract_helpers import make_imagefolder, tiny_config
from source_helpers import add_member, imagefolder_samples

from epcache.errors import ConfigError
from epcache.extract import extract_store
from epcache.store import open_store

pytestmark = pytest.mark.reliability_bad_input


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[bytes, str, int]]:
    folder = make_imagefolder(tmp_path_factory.mktemp("imgs"), splits={"train": 8})
    return imagefolder_samples(folder, "train")[0]


def _shard(path: Path, samples: list[tuple[bytes, str, int]], *, twice: dict[int, str]) -> None:
    """Samples 0..n-1; for each ``j: ext`` in ``twice`` the member ``j.ext`` is written a second time."""
    with tarfile.open(path, "w") as tf:
        for j, (data, ext, label) in enumerate(samples):
            add_member(tf, f"{j:06d}.{ext}", data)
            add_member(tf, f"{j:06d}.cls", str(label).encode())
        for j, ext in twice.items():
            data = samples[j][0] if ext != "cls" else b"2"
            add_member(tf, f"{j:06d}.{samples[j][1] if ext == 'img' else ext}", data)


@pytest.mark.parametrize("ext", ["img", "cls"])
def test_a_member_given_twice_is_refused_naming_shard_and_key(samples: list[tuple[bytes, str, int]],
                                                              tmp_path: Path, ext: str) -> None:
    data = tmp_path / "wds"
    data.mkdir()
    _shard(data / "a-000000.tar", samples[:4], twice={2: ext})
    _shard(data / "a-000001.tar", samples[4:], twice={})
    out = tmp_path / "s.zarr"
    with pytest.raises(ConfigError, match=r"1 sample\(s\) cannot be used: a-000000\.tar/000002: member 000002\.\w+ "
                       r"occurs twice in shard .*a-000000\.tar.*--on-bad-image skip"):
        extract_store(tiny_config(data, out, splits={"train": "a-{000000..000001}.tar"}), progress=False)
    assert not out.exists()

    result = extract_store(tiny_config(data, out, splits={"train": "a-{000000..000001}.tar"}, on_bad_image="skip"),
                           progress=False)
    assert result.skipped["train"] == ("a-000000.tar/000002",)
    with open_store(out) as store:
        assert store.is_complete() and "a-000000.tar/000002" not in store.read_ids("train")
        assert len(store.read_ids("train")) == 7
        assert store.meta.extra["skipped"]["train"] == ["a-000000.tar/000002"]


def test_the_same_key_with_other_extensions_is_one_sample(samples: list[tuple[bytes, str, int]],
                                                          tmp_path: Path) -> None:
    data = tmp_path / "wds"
    data.mkdir()
    with tarfile.open(data / "a.tar", "w") as tf:
        for j, (img, ext, label) in enumerate(samples[:3]):
            add_member(tf, f"{j:06d}.{ext}", img)
            add_member(tf, f"{j:06d}.cls", str(label).encode())
            add_member(tf, f"{j:06d}.json", b"{}")
            add_member(tf, f"sub/{j:06d}.{ext}", img)  # another directory: another key, not a duplicate
            add_member(tf, f"sub/{j:06d}.cls", b"0")
    result = extract_store(tiny_config(data, tmp_path / "s.zarr", splits={"train": "a.tar"}), progress=False)
    assert result.status == "complete" and not result.skipped.get("train")
    with open_store(tmp_path / "s.zarr") as store:
        assert len(store.read_ids("train")) == 6


def test_a_cut_shard_is_recorded_when_skipping(samples: list[tuple[bytes, str, int]], tmp_path: Path) -> None:
    data = tmp_path / "wds"
    data.mkdir()
    _shard(data / "a-000000.tar", samples[:4], twice={})
    whole = io.BytesIO()
    with tarfile.open(fileobj=whole, mode="w") as tf:
        for j, (img, ext, label) in enumerate(samples[4:], start=4):
            add_member(tf, f"{j:06d}.{ext}", img)
            add_member(tf, f"{j:06d}.cls", str(label).encode())
    raw = whole.getvalue()
    header = raw.index(b"000006.")  # cut inside sample 6's image: samples 6 and 7 are lost
    (data / "a-000001.tar").write_bytes(raw[: header + 512 + len(samples[6][0]) // 2])
    out = tmp_path / "s.zarr"
    with pytest.raises(ConfigError, match=r"a-000001\.tar is truncated or damaged after member '000006'"):
        extract_store(tiny_config(data, out, splits={"train": "a-{000000..000001}.tar"}), progress=False)
    result = extract_store(tiny_config(data, out, splits={"train": "a-{000000..000001}.tar"}, on_bad_image="skip"),
                           progress=False)
    assert result.skipped["train"] == ("a-000001.tar/000006",)  # listed, cut inside: skipped by id
    with open_store(out) as store:
        assert len(store.read_ids("train")) == 6  # sample 7 was never listed: the shard is recorded instead
        (line,) = store.meta.extra["skipped_files"]["train"]
        assert line.startswith("a-000001.tar: shard a-000001.tar is truncated or damaged"), line
        assert str(out.parent) not in line and "/" not in line.split(" ", 1)[0]  # no host path in the store
