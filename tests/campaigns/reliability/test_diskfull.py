"""Disk full: extraction into a small tmpfs, for zarr and HDF5, caught before the write and in the race
where another process takes the space between the check and the write; resume into a still-full disk;
then the same command after space was freed finishes byte-identical to an uninterrupted run.

Needs ``mount -t tmpfs`` (root, as in CI); skipped with the reason otherwise.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability_helpers import TINY, make_imagefolder, run_cli, store_arrays
from reliability_helpers import resize_tmpfs as _resize

import epcache.extract._blocks as blocks_module
import epcache.extract._target as target_module
from epcache.store import open_store

pytestmark = pytest.mark.reliability_diskfull

ARGS = [*TINY, "--dtype", "float32", "--views", "1", "--split", "train=train",  # 32 images: 8 blocks of ~61 KB
        "--record-paths"]  # stores at different places record one data root: their metadata is identical


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("diskfull")
    data = make_imagefolder(root / "data", splits={"train": 32}, seed=9)
    out: dict = {"data": data}
    for fmt in ("zarr", "h5"):
        ref = root / "ref" / fmt / f"s.{fmt}"
        code, text = run_cli("extract", *ARGS, "--data", str(data), "--out", str(ref))
        assert code == 0, text
        out[fmt] = ref
    return out


def _no_space_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """The race: another process takes the space after the check, so the write itself fails."""
    monkeypatch.setattr(blocks_module, "require_free_space", lambda *a, **k: None)
    monkeypatch.setattr(target_module, "require_free_space", lambda *a, **k: None)


@pytest.mark.parametrize(
    ("fmt", "race", "size"),
    [
        pytest.param("zarr", False, "1400k", id="zarr-checked"),
        pytest.param("h5", False, "1800k", id="h5-checked"),
        pytest.param("zarr", True, "300k", id="zarr-write-fails"),
        pytest.param("h5", True, "900k", id="h5-write-fails"),
    ],
)
def test_disk_full_is_one_line_and_resumes_byte_identical(refs: dict, small_disk: Path, monkeypatch: pytest.MonkeyPatch,
                                                          fmt: str, race: bool, size: str) -> None:
    _resize(small_disk, size)
    if race:
        _no_space_check(monkeypatch)
    out = small_disk / f"s.{fmt}"
    args = ["extract", *ARGS, "--data", str(refs["data"]), "--out", str(out)]
    code, text = run_cli(*args)
    assert code == 2 and "no space left on the device" in text and "re-run the same command" in text, text
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1
    code, text = run_cli("verify", str(out), "--no-progress")  # HDF5 closed cleanly: readable, incomplete
    assert code == 1 and "missing" in text and "Traceback" not in text, text
    with open_store(out) as st:
        written = int((st.block_records("train", 11) >= 0).sum())
        assert 0 < written < st.split("train").num_blocks  # the disk filled up mid-run, not before it
    code, text = run_cli(*args)  # resume into the still-full disk: the same clean refusal
    assert code == 2 and "no space left on the device" in text and "Traceback" not in text, text
    monkeypatch.undo()
    _resize(small_disk, "16m")
    code, text = run_cli(*args)  # space freed: the same command finishes the store
    assert code == 0, text
    assert store_arrays(out) == store_arrays(refs[fmt])
    assert sorted(p.name for p in small_disk.iterdir()) == [out.name]  # no ballast or lock left


def test_disk_full_during_overwrite_keeps_the_old_store(refs: dict, small_disk: Path) -> None:
    """--overwrite needs room for both stores until the swap; without it the old one stays as it was."""
    _resize(small_disk, "1600k")
    out = small_disk / "s.zarr"
    code, text = run_cli("extract", *ARGS, "--data", str(refs["data"]), "--out", str(out), "--layers", "0")
    assert code == 0, text
    before = store_arrays(out)
    code, text = run_cli("extract", *ARGS, "--data", str(refs["data"]), "--out", str(out), "--overwrite")
    assert code == 2 and "no space left on the device" in text and "Traceback" not in text, text
    assert store_arrays(out) == before
    assert sorted(p.name for p in small_disk.iterdir()) == ["s.zarr"]  # the half-built replacement is gone
