"""WebDataset shards as a source: the same images as an ImageFolder give byte-identical tokens.

Also: brace patterns, the ``--data PATTERN`` shortcut, bad shards under both ``--on-bad-image``
rules, ``verify --repair`` and the id lookup ``epcache attention`` uses.
"""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from extract_helpers import make_imagefolder, read_all, tiny_config
from source_helpers import add_member, imagefolder_samples, write_shards

from epcache.errors import BadImageError, ConfigError
from epcache.extract import extract_store, repair_store
from epcache.extract._lookup import image_fetcher
from epcache.extract._recorded import recorded_data_root
from epcache.extract._wds import expand_braces
from epcache.store import open_store


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("imgs"), splits={"train": 12, "val": 6})


@pytest.fixture(scope="module")
def shards(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    out = tmp_path_factory.mktemp("wds") / "shards"
    return out, {split: write_shards(folder, split, out) for split in ("train", "val")}


@pytest.fixture(scope="module")
def reference(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = tiny_config(folder, tmp_path_factory.mktemp("ref") / "ref.zarr", views=1)
    extract_store(cfg, progress=False)
    return Path(cfg.out)


def _same_tokens(a: Path | str, b: Path | str) -> None:
    got, want = read_all(a), read_all(b)
    assert got.keys() == want.keys()
    for key, arr in want.items():
        if key[1] == -2:  # ids: shard/key here, class/file there
            assert len(got[key]) == len(arr) and not set(got[key]) & set(arr)
        else:
            assert got[key].tobytes() == arr.tobytes(), key


def test_brace_patterns_expand_like_webdataset() -> None:
    assert expand_braces("a-{000..002}.tar") == ["a-000.tar", "a-001.tar", "a-002.tar"]
    assert expand_braces("{a,b}/x-{8..10}.tar") == ["a/x-8.tar", "a/x-9.tar", "a/x-10.tar", "b/x-8.tar",
                                                    "b/x-9.tar", "b/x-10.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    for bad in ("x-{3..1}.tar", "x-{a..b}.tar", "x-{0..99999999}.tar"):
        with pytest.raises(ConfigError, match="range|integers"):
            expand_braces(bad)


def test_shards_give_the_tokens_of_the_same_images_as_an_imagefolder(
    shards: tuple[Path, dict[str, str]], reference: Path, tmp_path: Path
) -> None:
    root, patterns = shards
    cfg = tiny_config(root, tmp_path / "wds.zarr", views=1, splits=patterns, workers=2)
    result = extract_store(cfg, progress=False)
    assert result.status == "complete"
    _same_tokens(cfg.out, reference)
    with open_store(cfg.out) as store:
        ids = store.read_ids("train")
        assert sorted(ids)[0] == "train-000000.tar/000000" and store.meta.dataset["kind"] == "webdataset"
        assert store.meta.dataset["label_key"] == "cls" and not Path(store.meta.extra["data_root"]).is_absolute()
        assert recorded_data_root(store.meta.extra, str(cfg.out)) == root.resolve()  # relative to the store
        assert store.split("train").classes == ("0", "1", "2")  # integer labels: class names are their text


def test_a_shard_pattern_as_data_is_one_train_split(shards: tuple[Path, dict[str, str]], reference: Path,
                                                    tmp_path: Path) -> None:
    root, patterns = shards
    cfg = tiny_config(f"{root}/{patterns['train']}", tmp_path / "p.zarr", views=1)
    extract_store(cfg, progress=False)
    with open_store(cfg.out) as store, open_store(reference) as ref:
        assert list(store.splits) == ["train"]
        assert store.read_tokens("train", 1).tobytes() == ref.read_tokens("train", 1).tobytes()
    with pytest.raises(ConfigError, match="one split 'train'"):
        extract_store(tiny_config(f"{root}/{patterns['train']}", tmp_path / "q.zarr", splits={"val": "x"}),
                      progress=False)
    assert not (tmp_path / "q.zarr").exists()


def _bad_shards(folder: Path, out: Path) -> str:
    """Three shards: an undecodable image, a sample without its label, a truncated last member."""
    samples, _ = imagefolder_samples(folder, "train")
    out.mkdir(parents=True)
    with tarfile.open(out / "bad-000000.tar", "w") as tf:
        for j in range(4):
            add_member(tf, f"{j:06d}.jpg", b"not a jpeg at all" if j == 1 else samples[j][0])
            add_member(tf, f"{j:06d}.cls", b"1")
    with tarfile.open(out / "bad-000001.tar", "w") as tf:
        for j in range(4, 8):
            add_member(tf, f"{j:06d}.{samples[j][1]}", samples[j][0])
            if j != 6:
                add_member(tf, f"{j:06d}.cls", b"0")
    whole = io.BytesIO()
    with tarfile.open(fileobj=whole, mode="w") as tf:
        for j in range(8, 11):
            add_member(tf, f"{j:06d}.{samples[j][1]}", samples[j][0])
            add_member(tf, f"{j:06d}.cls", b"2")
    data = whole.getvalue().rstrip(b"\0")
    (out / "bad-000002.tar").write_bytes(data[: len(data) - 900])  # cut inside sample 10's image
    return "bad-{000000..000002}.tar"


def test_bad_shards_follow_the_on_bad_image_rules(folder: Path, tmp_path: Path) -> None:
    pattern = _bad_shards(folder, tmp_path / "bad")
    out = tmp_path / "s.zarr"
    with pytest.raises(ConfigError, match=r"cannot be used: .*000006: no \.cls member.*--on-bad-image skip") as e:
        extract_store(tiny_config(tmp_path / "bad", out, splits={"train": pattern}), progress=False)
    assert "truncated" in str(e.value)
    assert not out.exists()  # refused while listing: no store

    good = tmp_path / "good"  # the undecodable image alone: found at extraction, named with its shard
    good.mkdir()
    shutil.copy(tmp_path / "bad" / "bad-000000.tar", good)
    with pytest.raises(BadImageError, match=r"bad-000000.tar/000001 in .*bad-000000.tar \(member 000001.jpg\)"):
        extract_store(tiny_config(good, tmp_path / "g.zarr", splits={"train": "bad-000000.tar"}), progress=False)

    result = extract_store(tiny_config(tmp_path / "bad", out, splits={"train": pattern}, on_bad_image="skip"),
                           progress=False)
    skipped = set(result.skipped["train"])
    assert {"bad-000000.tar/000001", "bad-000001.tar/000006", "bad-000002.tar/000010"} <= skipped
    with open_store(out) as store:
        assert store.is_complete() and not skipped & set(store.read_ids("train"))
        assert len(store.read_ids("train")) == 11 - len(skipped) >= 7
        assert set(store.meta.extra["skipped"]["train"]) == skipped


def test_repair_and_attention_find_shard_samples_by_id(shards: tuple[Path, dict[str, str]], folder: Path,
                                                       tmp_path: Path) -> None:
    root, patterns = shards
    cfg = tiny_config(root, tmp_path / "w.zarr", splits=patterns)
    extract_store(cfg, progress=False)
    clean = read_all(cfg.out)
    chunk = Path(cfg.out) / "splits" / "train" / "layers" / "1" / "c" / "1" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:10])  # a damaged block
    result = repair_store(cfg.out, workers=0, progress=False)  # data root, shards and keys as recorded
    assert result.after.ok and result.blocks == (("train", 1),)
    repaired = read_all(cfg.out)
    assert all(repaired[k].tobytes() == v.tobytes() for k, v in clean.items())

    samples, _ = imagefolder_samples(folder, "train")
    with open_store(cfg.out) as store:
        fetch = image_fetcher(store.meta, "train", str(root))
        assert fetch is not None
        ids = store.read_ids("train")
        for sid in ids[:4]:
            assert fetch(sid) == samples[int(sid.rsplit("/", 1)[1])][0]
        with pytest.raises(ConfigError, match="not in"):
            fetch("train-000000.tar/999999")
        from epcache.report._attention import _load_images

        pictures = _load_images(str(root), list(ids[:2]), store.meta.preprocessing, fetch)
        assert all(p is not None and p.shape == (32, 32, 3) for p in pictures)
    np.testing.assert_array_equal(clean[("train", -1)], repaired[("train", -1)])


def test_shards_behind_an_fsspec_url(shards: tuple[Path, dict[str, str]], reference: Path, tmp_path: Path) -> None:
    import fsspec

    root, patterns = shards
    fs = fsspec.filesystem("memory")
    for f in root.iterdir():
        fs.pipe(f"/wds-{tmp_path.name}/{f.name}", f.read_bytes())
    url = f"memory://wds-{tmp_path.name}"
    cfg = tiny_config(url, tmp_path / "u.zarr", views=1, splits=patterns)
    extract_store(cfg, progress=False)
    _same_tokens(cfg.out, reference)
    with open_store(cfg.out) as store:
        assert store.meta.extra["data_root"] == url and store.meta.dataset["name"] == f"wds-{tmp_path.name}"
    (Path(cfg.out) / "splits" / "val" / "layers" / "0" / "c" / "0" / "0" / "0" / "0").unlink()
    result = repair_store(cfg.out, workers=0, progress=False)  # the recorded URL is the default --data
    assert result.after.ok and result.blocks == (("val", 0),)
