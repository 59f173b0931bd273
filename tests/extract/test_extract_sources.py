"""Image sources: ImageFolder and CSV listings, deterministic ids, and refusal of unsafe paths."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from extract_helpers import make_imagefolder, write_image

from epcache.errors import ConfigError
from epcache.extract._sources import scan_splits


def test_imagefolder_ids_labels_and_shared_classes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for rel in ["train/b/2.png", "train/b/1.jpg", "train/a/x/deep.png", "train/c/0.png", "val/a/0.png", "val/c/9.png"]:
        write_image(tmp_path / rel, rng)
    (tmp_path / "train" / "a" / "notes.txt").write_text("not an image")
    write_image(tmp_path / "train" / "a" / ".hidden.png", rng)
    splits = scan_splits(tmp_path, {"train": "train", "val": "val"})
    train, val = splits["train"], splits["val"]
    assert train.classes == val.classes == ("a", "b", "c")  # union: val has no "b" but labels agree
    assert train.ids == ("train/a/x/deep.png", "train/b/1.jpg", "train/b/2.png", "train/c/0.png")
    assert train.labels.tolist() == [0, 1, 1, 2]
    assert val.ids == ("val/a/0.png", "val/c/9.png") and val.labels.tolist() == [0, 2]
    assert train.path(0) == tmp_path.resolve() / "train/a/x/deep.png"
    assert train.labels.dtype == np.int64


def test_imagefolder_listing_is_independent_of_creation_order(tmp_path: Path) -> None:
    a = make_imagefolder(tmp_path / "a", splits={"train": 9}, seed=1)
    b = tmp_path / "b"
    for p in sorted(a.rglob("*.*"), reverse=True):  # same files, created in the opposite order
        (b / p.relative_to(a)).parent.mkdir(parents=True, exist_ok=True)
        (b / p.relative_to(a)).write_bytes(p.read_bytes())
    sa, sb = scan_splits(a, {"train": "train"})["train"], scan_splits(b, {"train": "train"})["train"]
    assert sa.ids == sb.ids and np.array_equal(sa.labels, sb.labels)


def test_csv_with_and_without_header(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for rel in ["imgs/b.png", "imgs/a.png", "imgs/c.png"]:
        write_image(tmp_path / rel, rng)
    (tmp_path / "train.csv").write_text("path,label\nimgs/b.png,2\nimgs/a.png,0\n")
    (tmp_path / "val.csv").write_text("imgs/c.png,1\n\n")
    splits = scan_splits(tmp_path, {"train": "train.csv", "val": "val.csv"})
    assert splits["train"].ids == ("imgs/a.png", "imgs/b.png") and splits["train"].labels.tolist() == [0, 2]
    assert splits["val"].ids == ("imgs/c.png",) and splits["val"].labels.tolist() == [1]
    assert splits["train"].classes == ("0", "1", "2") and splits["train"].kind == "csv"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("/etc/passwd,0", "is absolute"),
        ("../outside.png,0", "climbs out"),
        ("imgs/missing.png,0", "does not exist"),
        ("imgs/a.png,-1", "negative"),
        ("imgs/a.png,cat", "integer label"),
        ("imgs/a.png", "integer label"),
        ("imgs/a.png,0\nimgs/a.png,1", "listed twice"),
    ],
)
def test_csv_bad_rows_are_refused(tmp_path: Path, row: str, message: str) -> None:
    root = tmp_path / "root"
    write_image(root / "imgs" / "a.png", np.random.default_rng(0))
    write_image(tmp_path / "outside.png", np.random.default_rng(1))
    (root / "s.csv").write_text("path,label\n" + row + "\n")
    with pytest.raises(ConfigError, match=message):
        scan_splits(root, {"train": "s.csv"})


def test_csv_symlink_escaping_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    target = write_image(tmp_path / "secret.png", np.random.default_rng(0))
    os.symlink(target, root / "link.png")
    (root / "s.csv").write_text("link.png,0\n")
    with pytest.raises(ConfigError, match="symlink that leads outside"):
        scan_splits(root, {"train": "s.csv"})


def test_missing_root_missing_split_and_empty_split(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        scan_splits(tmp_path / "nope", {"train": "train"})
    make_imagefolder(tmp_path / "d", splits={"train": 2})
    with pytest.raises(ConfigError, match=r"split 'val': directory .* does not exist"):
        scan_splits(tmp_path / "d", {"train": "train", "val": "val"})
    (tmp_path / "d" / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no images under"):
        scan_splits(tmp_path / "d", {"train": "empty"})
    with pytest.raises(ConfigError, match="subdirectory of the data root"):
        scan_splits(tmp_path / "d", {"train": "../d/train"})


def test_mixing_imagefolder_and_csv_is_refused(tmp_path: Path) -> None:
    make_imagefolder(tmp_path, splits={"train": 2})
    (tmp_path / "val.csv").write_text("train/cat/img_0000.jpg,0\n")
    with pytest.raises(ConfigError, match="mix ImageFolder directories and CSV"):
        scan_splits(tmp_path, {"train": "train", "val": "val.csv"})
