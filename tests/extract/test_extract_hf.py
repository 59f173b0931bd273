"""Hugging Face datasets (save_to_disk Arrow, parquet) as a source: tokens equal the ImageFolder's."""

from __future__ import annotations

from pathlib import Path

import pytest
from extract_helpers import make_imagefolder, read_all, tiny_config
from source_helpers import imagefolder_samples, write_parquet, write_save_to_disk

from epcache.errors import BadImageError, ConfigError
from epcache.extract import extract_store, repair_store
from epcache.extract._lookup import image_fetcher
from epcache.extract._recorded import recorded_data_root
from epcache.store import open_store

pytest.importorskip("pyarrow")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("imgs"), splits={"train": 12, "val": 6})


@pytest.fixture(scope="module")
def reference(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = tiny_config(folder, tmp_path_factory.mktemp("ref") / "ref.zarr")
    extract_store(cfg, progress=False)
    return Path(cfg.out)


def _assert_same_tokens(a: Path | str, b: Path | str) -> None:
    got, want = read_all(a), read_all(b)
    assert got.keys() == want.keys()
    for key, arr in want.items():
        if key[1] != -2:  # ids differ: rows here, paths there
            assert got[key].tobytes() == arr.tobytes(), key


@pytest.mark.parametrize("layout", ["save_to_disk", "parquet"])
def test_hf_dataset_gives_the_tokens_of_the_same_images(folder: Path, reference: Path, tmp_path: Path,
                                                        layout: str) -> None:
    ds = tmp_path / "in1k"
    for split in ("train", "val"):
        (write_save_to_disk if layout == "save_to_disk" else write_parquet)(folder, split, ds / split)
    cfg = tiny_config(f"hf:{ds}", tmp_path / "hf.zarr", workers=2)
    extract_store(cfg, progress=False)
    _assert_same_tokens(cfg.out, reference)
    with open_store(cfg.out) as store:
        assert sorted(store.read_ids("train"))[:2] == ["train/00000000", "train/00000001"]  # rows are permuted
        assert store.meta.dataset["kind"] == "hf" and store.meta.dataset["image_column"] == "image"
        assert store.meta.extra["data_root"] == "hf:in1k"  # relative to the store's directory
        assert recorded_data_root(store.meta.extra, str(cfg.out)) == f"hf:{ds.resolve()}"
        want = ("cat", "dog", "eel") if layout == "save_to_disk" else ("0", "1", "2")  # ClassLabel names if recorded
        assert store.split("train").classes == want
        fetch = image_fetcher(store.meta, "val", f"hf:{ds}")
        assert fetch is not None and fetch("val/00000003") == imagefolder_samples(folder, "val")[0][3][0]


def test_repair_rereads_rows_of_an_hf_store(folder: Path, tmp_path: Path) -> None:
    ds = tmp_path / "d"
    write_parquet(folder, "train", ds / "train")
    cfg = tiny_config(f"hf:{ds}", tmp_path / "h.zarr", splits={"train": "train"})
    extract_store(cfg, progress=False)
    clean = read_all(cfg.out)
    (Path(cfg.out) / "splits" / "train" / "layers" / "0" / "c" / "2" / "0" / "0" / "0").unlink()
    result = repair_store(cfg.out, workers=0, progress=False)
    assert result.after.ok and result.blocks == (("train", 2),)
    assert all(read_all(cfg.out)[k].tobytes() == v.tobytes() for k, v in clean.items())


def test_hf_user_errors_and_bad_rows(folder: Path, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ds = tmp_path / "d"
    write_parquet(folder, "train", ds / "train", files=1)
    with pytest.raises(ConfigError, match="no column 'img'.*--image-column"):
        extract_store(tiny_config(f"hf:{ds}", tmp_path / "a.zarr", splits={"train": "train"}, image_column="img"),
                      progress=False)
    with pytest.raises(ConfigError, match="no save_to_disk dataset"):
        extract_store(tiny_config(f"hf:{ds}", tmp_path / "a.zarr", splits={"train": "nope"}), progress=False)
    samples, _ = imagefolder_samples(folder, "train")
    rows = [{"bytes": d, "path": None} for d, _, _ in samples[:6]]
    rows[2] = {"bytes": b"garbage", "path": None}
    labels = [0, 1, None, 2, None, 1]
    rows[4] = {"bytes": samples[4][0], "path": None}
    bad = tmp_path / "bad"
    bad.mkdir()
    pq.write_table(pa.table({"image": rows, "label": pa.array(labels, pa.int64())}), bad / "x.parquet")
    with pytest.raises(ConfigError, match=r"2 sample\(s\) cannot be used.*label 'label' is missing"):
        extract_store(tiny_config(f"hf:{tmp_path}", tmp_path / "b.zarr", splits={"train": "bad"}), progress=False)
    result = extract_store(tiny_config(f"hf:{tmp_path}", tmp_path / "b.zarr", splits={"train": "bad"},
                                       on_bad_image="skip"), progress=False)
    assert set(result.skipped["train"]) == {"bad/00000002", "bad/00000004"}
    pq.write_table(pa.table({"image": [rows[0], {"bytes": b"junk", "path": None}], "label": [0, 1]}),
                   bad / "x.parquet")
    with pytest.raises(BadImageError, match=r"bad/00000001 in .*x.parquet \(row 1, column 'image'\)"):
        extract_store(tiny_config(f"hf:{tmp_path}", tmp_path / "c.zarr", splits={"train": "bad"}), progress=False)
