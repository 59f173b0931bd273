"""The catalog: `epcache ls` over a directory of stores, and extraction pointed to an existing store."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from scale_helpers import make_imagefolder, tiny_config
from typer.testing import CliRunner

from epcache.cli import app
from epcache.errors import StoreExistsError, StoreNotFoundError
from epcache.extract import extract_store
from epcache.store import SplitSpec, create_store, find_stores, list_stores, open_store
from epcache.store.ops.lock import acquire_store_lock

runner = CliRunner()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("imgs"), splits={"train": 9, "val": 5})


@pytest.fixture(scope="module")
def lab(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lab's root: stores at several depths, and things that are not (or not readable) stores.

    root/
      lab/vit_a.zarr           complete, views=1 (a copy of it nested inside must not be listed)
      lab/deep/vit_b.h5        complete, other seed (other provenance), HDF5
      partial.zarr             same provenance as vit_a, no block written
      corrupt.zarr             a copy of vit_a claiming format version 99
      plain.zarr               a zarr group that epcache did not make
      .hidden/vit_c.zarr       hidden directories are skipped
      notes/readme.txt
    """
    root = tmp_path_factory.mktemp("root")
    a = extract_store(tiny_config(data, root / "lab" / "vit_a.zarr", views=1), progress=False)
    assert a.status == "complete"
    extract_store(tiny_config(data, root / "lab" / "deep" / "vit_b.h5", seed=1, splits={"val": "val"}), progress=False)
    with open_store(root / "lab" / "vit_a.zarr") as src:
        meta = dataclasses.replace(src.meta, extra={})
        partial = create_store(root / "partial.zarr", meta)
        with partial:
            for name in ("train", "val"):
                back = np.argsort(src.read_order(name))  # stored order -> dataset order (what a spec lists)
                ids = [src.read_ids(name)[i] for i in back]
                partial.add_split(SplitSpec(name=name, labels=src.read_labels(name)[back], ids=ids,
                                            classes=list(src.split(name).classes), views=src.split(name).views,
                                            permutation_seed=0))
    shutil.copytree(root / "lab" / "vit_a.zarr", root / "corrupt.zarr")
    g = zarr.open_group(root / "corrupt.zarr", mode="r+")
    g.attrs["epcache"] = {**g.attrs["epcache"], "format_version": 99}
    shutil.copytree(root / "lab" / "vit_a.zarr", root / "lab" / "vit_a.zarr" / "inner" / "copy.zarr")
    zarr.open_group(root / "plain.zarr", mode="w").attrs["note"] = "not epcache"
    shutil.copytree(root / "lab" / "vit_a.zarr", root / ".hidden" / "vit_c.zarr")
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("stores live under lab/")
    return root


def test_list_stores_walks_the_tree_but_not_into_stores(lab: Path) -> None:
    entries = {Path(e.location).relative_to(lab).as_posix(): e for e in list_stores(lab)}
    assert sorted(entries) == ["corrupt.zarr", "lab/deep/vit_b.h5", "lab/vit_a.zarr", "partial.zarr"]
    a, b, partial, corrupt = (entries[k] for k in ("lab/vit_a.zarr", "lab/deep/vit_b.h5", "partial.zarr",
                                                   "corrupt.zarr"))
    assert a.backbone == "vit_tiny_patch16_224" and a.weights_source == "random-init"
    assert a.format == "zarr" and a.dtype == "float16" and a.layers == (0, 1) and a.augmented_views == 1
    assert [(s.name, s.num_samples, s.views, s.num_classes) for s in a.splits] == [("train", 9, 2, 3), ("val", 5, 1, 3)]
    assert a.complete and a.size_bytes > 0 and a.writer is None and a.error is None
    assert a.dataset.startswith("imgs") and a.dataset.endswith("(imagefolder)")
    with open_store(lab / "lab" / "vit_a.zarr") as store:
        assert a.provenance == store.provenance
    assert b.format == "h5" and b.complete and b.provenance != a.provenance
    assert not partial.complete and partial.provenance == a.provenance
    assert not any(s.complete for s in partial.splits)
    assert corrupt.error is not None and "version" in corrupt.error
    assert find_stores(lab, max_depth=1) == sorted(str(lab / n) for n in ("corrupt.zarr", "partial.zarr", "plain.zarr"))


def test_ls_cli_json_and_text(lab: Path) -> None:
    r = runner.invoke(app, ["ls", str(lab), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert [Path(e["location"]).name for e in doc] == ["corrupt.zarr", "vit_b.h5", "vit_a.zarr", "partial.zarr"]
    a = doc[2]
    assert a["splits"][0] == {"name": "train", "num_samples": 9, "views": 2, "num_classes": 3, "complete": True}
    assert a["layers"] == [0, 1] and a["complete"] and a["writer"] is None and len(a["provenance"]) == 64

    with acquire_store_lock(lab / "partial.zarr"):  # an extraction in progress shows as such
        r = runner.invoke(app, ["ls", str(lab)])
    assert r.exit_code == 0, r.output
    out = r.output.splitlines()
    # a store's line, with the indented details line under it; every line fits 100 columns
    table = [line for line in out if ": " not in line or line.startswith("    ")]  # notes name a store + ": "
    lines = {line.split()[0]: " ".join(table[i:i + 3]) for i, line in enumerate(table) if i and line[0] != " "}
    assert out[0].split() == ["STORE", "BACKBONE", "SPLITS", "LAYERS", "DTYPE", "SIZE", "STATUS"]
    assert max(len(line) for line in table if not line.startswith("    writer:")) <= 100, table
    assert "complete" in lines["lab/vit_a.zarr"] and "train:9x2 val:5" in lines["lab/vit_a.zarr"]
    assert "0-1" in lines["lab/vit_a.zarr"] and "random-init" in lines["lab/vit_a.zarr"]
    assert "writing" in lines["partial.zarr"] and "writer: pid" in lines["partial.zarr"]
    assert "unreadable" in lines["corrupt.zarr"] and "corrupt.zarr: store has format version 99" in r.output

    missing = runner.invoke(app, ["ls", str(lab / "nope")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    with pytest.raises(StoreNotFoundError):
        list_stores(lab / "nope")


def test_extraction_points_to_a_complete_store_with_the_same_provenance(data: Path, lab: Path) -> None:
    # same configuration, next to vit_a: refused with vit_a's name; partial.zarr (same key) is not complete
    again = tiny_config(data, lab / "lab" / "again.zarr", views=1)
    with pytest.raises(StoreExistsError, match=r"vit_a\.zarr already holds these tokens.*--allow-duplicate") as err:
        extract_store(again, progress=False)
    shown = runner.invoke(app, ["info", str(lab / "lab" / "vit_a.zarr")]).output
    key = str(err.value).split("(provenance ")[1].split(",")[0]
    assert f"provenance  {key}" in shown  # the refusal quotes the key `epcache info` shows
    assert not again.out.exists()  # nothing left behind, not even the lock's directory
    # a subset of its splits is held too; HDF5 and zarr stores with one key hold the same tokens
    with pytest.raises(StoreExistsError, match="vit_a"):
        extract_store(dataclasses.replace(again, splits={"train": "train"}), progress=False)
    with pytest.raises(StoreExistsError, match=r"vit_b\.h5"):
        extract_store(tiny_config(data, lab / "lab" / "deep" / "b.zarr", seed=1, splits={"val": "val"}), progress=False)
    # an incomplete neighbour with the same key is no reason to stop (partial.zarr sits in the root)
    fresh = tiny_config(data, lab / "fresh.zarr", views=1)
    assert extract_store(fresh, progress=False).status == "complete"
    shutil.rmtree(fresh.out)
    # explicit duplicates are allowed
    allowed = extract_store(dataclasses.replace(again, allow_duplicate=True), progress=False)
    assert allowed.status == "complete"
    shutil.rmtree(again.out)

