"""A token array's ``epcache_dtype`` attribute must say what the metadata document says (cache_layout.md §3).

Other tools read a token array by that attribute (a uint16 array holding bfloat16 bits says so), so an
edited attribute makes them misread intact bytes: float16 read as bfloat16. epcache reads the
document, so it would not notice by itself; `epcache verify` reports the disagreement and `epcache
probe` refuses the store, both naming the array and the fix.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from corrupt_helpers import DATA, copy, edit_json, probe, verify, write

from epcache.errors import CorruptStoreError
from epcache.store import open_store
from epcache.store.verify.integrity import attribute_problems, check_store_integrity

pytestmark = pytest.mark.reliability_corruption


def _attrs(store: Path, layer: int = 1, split: str = "train") -> Path:
    return store / "splits" / split / "layers" / str(layer) / "zarr.json"


def _set_zarr_attr(store: Path, value: str | None, *, layer: int = 1, key: str = "epcache_dtype") -> None:
    def edit(d: dict) -> None:
        if value is None:
            d["attributes"].pop(key)
        else:
            d["attributes"][key] = value

    edit_json(_attrs(store, layer), edit)


def _set_h5_attr(store: Path, value: str, *, layer: int = 1) -> None:
    import h5py

    with h5py.File(store, "r+") as f:
        f[f"splits/train/layers/{layer}"].attrs["epcache_dtype"] = value


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("attr")
    return {
        "zarr": write(root / "f16.zarr"),
        "bf16": write(root / "bf16.zarr", dtype="bfloat16"),
        "sharded": write(root / "sharded.zarr", shard=16),
        "h5": write(root / "f16.h5"),
    }


def _both_refuse(store: Path, tmp_path: Path, *expected: str) -> None:
    """verify reports it (exit 1) and probe refuses with one line (exit 2), both naming array and fix."""
    code, out = verify(store)
    assert code == 1, out
    assert "array attributes: split 'train' layer 1" in out, out
    for text in expected:
        assert text in out, out
    code, out = probe(store, "--out", str(tmp_path / "run"))
    assert code == 2, out
    assert out.startswith("error: ") and len(out.strip().splitlines()) == 1 and "Traceback" not in out, out
    assert "fails the array attributes check: split 'train' layer 1" in out, out
    assert "set the attribute back to" in out and "epcache extract --overwrite" in out, out
    for text in expected:
        assert text in out, out
    assert not (tmp_path / "run" / "results.jsonl").exists()


@pytest.mark.parametrize(
    ("kind", "edited", "says"),
    [
        ("zarr", "bfloat16", "epcache_dtype is 'bfloat16', the metadata document says 'float16'"),
        ("bf16", "float16", "epcache_dtype is 'float16', the metadata document says 'bfloat16'"),
        ("sharded", "float32", "epcache_dtype is 'float32', the metadata document says 'float16'"),
    ],
)
def test_an_edited_dtype_attribute_fails_verify_and_probe(
    kind: str, edited: str, says: str, pristine: dict[str, Path], tmp_path: Path
) -> None:
    store = copy(pristine[kind], tmp_path / pristine[kind].name)
    _set_zarr_attr(store, edited)
    _both_refuse(store, tmp_path, says)


def test_an_edited_hdf5_dtype_attribute_fails_verify_and_probe(pristine: dict[str, Path], tmp_path: Path) -> None:
    store = copy(pristine["h5"], tmp_path / "s.h5")
    _set_h5_attr(store, "bfloat16")
    _both_refuse(store, tmp_path, "epcache_dtype is 'bfloat16', the metadata document says 'float16'")


def test_a_removed_dtype_attribute_fails_in_format_11(pristine: dict[str, Path], tmp_path: Path) -> None:
    store = copy(pristine["zarr"], tmp_path / "s.zarr")
    _set_zarr_attr(store, None)
    _both_refuse(store, tmp_path, "epcache_dtype is missing, the metadata document says 'float16'")


def test_the_api_refuses_with_the_array_named(pristine: dict[str, Path], tmp_path: Path) -> None:
    store = copy(pristine["zarr"], tmp_path / "s.zarr")
    with open_store(store) as st:
        assert attribute_problems(st) == []
        check_store_integrity(st, ["train", "val"])  # the pristine store passes
    _set_zarr_attr(store, "bfloat16", layer=0)
    with open_store(store) as st:
        problems = attribute_problems(st)
        assert len(problems) == 1 and problems[0].startswith("split 'train' layer 0:"), problems
        check_store_integrity(st, ["val"])  # a probe of another split is not refused for it
        with pytest.raises(CorruptStoreError, match=r"split 'train' layer 0: the token array's attribute epcache_"):
            check_store_integrity(st, ["train"])
        assert st.read_chunk("train", 0, 0).dtype.name == "float16"  # epcache itself reads by the document


def test_setting_the_attribute_back_is_the_fix(pristine: dict[str, Path], tmp_path: Path) -> None:
    store = copy(pristine["bf16"], tmp_path / "s.zarr")
    _set_zarr_attr(store, "float16")
    assert verify(store)[0] == 1
    _set_zarr_attr(store, "bfloat16")
    code, out = verify(store)
    assert code == 0, out


def test_format_10_stores_without_attributes_pass_and_a_wrong_one_fails(tmp_path: Path) -> None:
    """1.0 writers wrote no attributes: absent is fine there, but one that is present must be right."""
    store = copy(DATA / "v1_0" / "store.zarr", tmp_path / "v10.zarr")
    assert "epcache_dtype" not in json.loads(_attrs(store).read_text()).get("attributes", {})
    code, out = verify(store)
    assert code == 0, out
    _set_zarr_attr(store, "bfloat16")
    _both_refuse(store, tmp_path, "epcache_dtype is 'bfloat16', the metadata document says 'float16'")
