"""store/ops/swap.py: the new store replaces the old one in one step, or the old one comes back."""

from __future__ import annotations

from pathlib import Path

import pytest

import epcache.store.ops.swap as swap
from epcache.errors import ConfigError
from epcache.store.ops.lock import LOCK_NAME


def _zarr_dir(path: Path, tag: str) -> Path:
    (path / "c").mkdir(parents=True)
    (path / "zarr.json").write_text(tag)
    (path / "c" / "0").write_text(tag)
    return path


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_swap_in_replaces_the_directory_and_keeps_the_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           exchange: bool) -> None:
    if not exchange:
        monkeypatch.setattr(swap, "_exchange", lambda a, b: False)
    old = _zarr_dir(tmp_path / "s.zarr", "old")
    (old / LOCK_NAME).write_text("our lock")
    new = _zarr_dir(Path(swap.staging_location(str(old))), "new")
    assert new.name == ".epcache-overwrite-s.zarr"
    swap.swap_in(str(new), str(old))
    assert (old / "zarr.json").read_text() == "new" and (old / "c" / "0").read_text() == "new"
    assert (old / LOCK_NAME).read_text() == "our lock"  # still held across the swap
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_swap_in_replaces_an_hdf5_file(tmp_path: Path) -> None:
    old = tmp_path / "s.h5"
    old.write_bytes(b"old")
    new = Path(swap.staging_location(str(old)))
    new.write_bytes(b"new")
    swap.swap_in(str(new), str(old))
    assert old.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]


def test_an_interrupted_two_rename_swap_puts_the_old_store_back(tmp_path: Path) -> None:
    """Killed between "old aside" and "new in place": the next run restores the old store and its lock."""
    aside = _zarr_dir(tmp_path / ".epcache-replaced-s.zarr", "old")
    out = tmp_path / "s.zarr"
    out.mkdir()
    (out / LOCK_NAME).write_text("the next run's lock")
    assert swap.recover_interrupted_swap(str(out))
    assert (out / "zarr.json").read_text() == "old" and (out / LOCK_NAME).read_text() == "the next run's lock"
    assert not aside.exists()


def test_check_replaceable_refuses_what_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "notes.zarr").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a store"):
        swap.check_replaceable(str(tmp_path / "notes.zarr"), "zarr")
    (tmp_path / "mine.zarr").mkdir()
    (tmp_path / "mine.zarr" / "thesis.tex").write_text("x")
    with pytest.raises(ConfigError, match="not a zarr store"):
        swap.check_replaceable(str(tmp_path / "mine.zarr"), "zarr")
    (tmp_path / "x.h5").write_text("not hdf5")
    with pytest.raises(ConfigError, match="is not an HDF5 store"):
        swap.check_replaceable(str(tmp_path / "x.h5"), "h5")
    assert swap.check_replaceable(str(tmp_path / "nothing.zarr"), "zarr") is False
    with pytest.raises(ValueError):
        swap.discard_staging(str(tmp_path / "mine.zarr"))  # only ever a staging location
    assert (tmp_path / "mine.zarr" / "thesis.tex").exists()
