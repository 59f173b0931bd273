"""`verify --repair` of a quantised store (cache_layout.md §3.5): codes and scales come back byte-identical."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner
from verify_helpers import chunk_file, copy_store, flip_byte, make_imagefolder, store_files, tiny_config

from epcache.cli import app
from epcache.extract import extract_store
from epcache.store import verify_store

runner = CliRunner()
SPLITS = {"train": 24, "val": 8}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("verify_q") / "data", splits=SPLITS, seed=5)


@pytest.fixture(scope="module")
def clean(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clean_q") / "q.zarr"
    extract_store(tiny_config(data, out, views=1, quantize="int8-token"), progress=False)
    return out


def _repair(store: Path, data: Path) -> object:
    return runner.invoke(app, ["verify", str(store), "--repair", "--data", str(data), "--workers", "0",
                               "--no-progress"])


def _bad(store: Path) -> set[tuple[str, int, int, str]]:
    return {(b.split, b.layer, b.block, b.problem) for b in verify_store(store).bad_blocks}


def test_damaged_codes_and_scales_are_found_and_repaired(clean: Path, data: Path, tmp_path: Path) -> None:
    b = copy_store(clean, tmp_path / "b" / "b.zarr")
    flip_byte(chunk_file(b, "train", 0, 1), 10)  # codes
    flip_byte(b / "splits/train/scales/1/c/3/0/0", 5)  # scales of block 3, layer 1
    assert _bad(b) == {("train", 0, 1, "checksum"), ("train", 1, 3, "checksum")}
    r = _repair(b, data)
    assert r.exit_code == 0, r.output  # type: ignore[attr-defined]
    assert store_files(b) == store_files(clean)


def test_a_repair_that_does_not_reproduce_keeps_intact_codes_and_scales(
    clean: Path, data: Path, tmp_path: Path
) -> None:
    """Other pixels under the same names: the intact layer of the block is put back from its backup
    (codes and scales), the damaged one is marked missing."""
    other = make_imagefolder(tmp_path / "copy" / "data", splits=SPLITS, seed=6)
    b = copy_store(clean, tmp_path / "b" / "b.zarr")
    flip_byte(chunk_file(b, "train", 0, 3), 3)
    r = _repair(b, other)
    assert r.exit_code == 2  # type: ignore[attr-defined]
    assert _bad(b) == {("train", 0, 3, "missing")}
    got, want = store_files(b), store_files(clean)
    layer1 = [k for k in want if "/layers/1/" in k or "/scales/1/" in k]
    assert layer1 and all(got[k] == want[k] for k in layer1)
