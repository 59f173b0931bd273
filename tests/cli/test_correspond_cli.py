"""`epcache correspond`: prints the layer x threshold table, writes both files; a bad input exits 2, unwritten."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from correspond_helpers import DIM, centre, grid_meta, rolled, write_grid_store, write_pairs
from typer.testing import CliRunner

from epcache.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three images; b is a moved by one patch to the right, c is noise; d was skipped at extraction."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 17, DIM))
    b = a.copy()
    b[:, 1:] = rolled(a[:, 1:], (0, 1))
    tokens = {"val/a.png": a, "val/b.png": b, "val/c.png": rng.standard_normal((2, 17, DIM)),
              "val/d.png": np.zeros((2, 17, DIM))}
    return write_grid_store(tmp_path_factory.mktemp("ccli") / "s.zarr", tokens, labels={"val/d.png": -1})


def _pairs(tmp_path: Path, rows: list[tuple[object, ...]] | None = None) -> Path:
    if rows is None:
        rows = []
        for p in (0, 5, 10):
            (sx, sy), (tx, ty) = centre(p), centre(p + 1)
            rows.append(("val/a.png", "val/b.png", sx, sy, tx, ty))
    return write_pairs(tmp_path / "pairs.csv", rows)


def test_correspond_prints_the_table_and_writes_json_and_csv(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["correspond", "--store", str(store), "--pairs", str(_pairs(tmp_path)), "--layers", "all",
            "--thresholds", "0.05,0.2", "--out", str(out)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[0].startswith("PCK % (--pck-norm image, bilinear): 3 keypoints in 1 pairs of split 'val'")
    assert lines[1].split() == ["layer", "grid", "@0.05", "@0.2"]
    assert lines[2].split() == ["0", "4x4", "100.0", "100.0"] and lines[3].split() == ["1", "4x4", "100.0", "100.0"]
    doc = json.loads((out / "correspond.json").read_text())
    assert doc["thresholds"] == [0.05, 0.2] and [d["layer"] for d in doc["layers"]] == [0, 1]
    assert (out / "correspond.csv").read_text().splitlines()[1] == "0,val/a.png,val/b.png,3,1,1"
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "exist(s); pass --force" in r.output
    r = runner.invoke(app, [*args, "--force", "--mutual", "--layers", "-1"])
    assert r.exit_code == 0, r.output
    assert "kept by the mutual filter: layer 1 3/3" in r.output
    assert [d["layer"] for d in json.loads((out / "correspond.json").read_text())["layers"]] == [1]


@pytest.mark.reliability_bad_input
@pytest.mark.parametrize(
    ("rows", "extra", "message"),
    [
        ([("val/a.png", "val/zzz.png", 8, 8, 8, 8)], [], "1 id(s) not in split 'val'"),
        ([("val/a.png", "val/b.png", 8, 64, 8, 8)], [], "line 2: keypoint sx,sy=(8, 64) lies outside the 64x64"),
        ([("val/a.png", "val/b.png", 8, 8, -1, 8)], [], "keypoint tx,ty=(-1, 8) lies outside"),
        ([("val/a.png", "val/d.png", 8, 8, 8, 8)], [], "skipped at extraction"),
        (None, ["--layers", "7"], "the store has no layer(s) [7]"),
        (None, ["--split", "train"], "train"),
        (None, ["--thresholds", "0.05,2"], "--thresholds: '2' is not a fraction"),
        (None, ["--pck-norm", "object"], "--pck-norm 'object': use image or bbox"),
        (None, ["--interp", "nearest"], "--interp 'nearest'"),
        ([("val/a.png", "val/b.png", 8, 8, 8, 8)], ["--pck-norm", "bbox"], "span no box"),
    ],
)
def test_bad_input_exits_2_naming_the_problem_and_writes_nothing(
    store: Path, tmp_path: Path, rows: list[tuple[object, ...]] | None, extra: list[str], message: str
) -> None:
    out = tmp_path / "out"
    r = runner.invoke(app, ["correspond", "--store", str(store), "--pairs", str(_pairs(tmp_path, rows)),
                            "--out", str(out), *extra])
    assert r.exit_code == 2, r.output
    assert message in r.output and r.output.startswith("error: ") and len(r.output.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.reliability_bad_input
def test_a_store_without_a_patch_grid_or_input_size_exits_2(tmp_path: Path) -> None:
    pairs = _pairs(tmp_path, [("val/a.png", "val/b.png", 8, 8, 8, 8)])
    light = {"val/a.png": np.zeros((1, 2, DIM)), "val/b.png": np.zeros((1, 2, DIM))}
    cases = [
        (write_grid_store(tmp_path / "light.zarr", light, meta=grid_meta(grid=(1, 1), layers=(0,),
                                                                         keep=("cls", "gap"))),
         "is a light store (--keep cls,gap)"),
        (write_grid_store(tmp_path / "pooled.zarr", light, meta=grid_meta(grid=(1, 1), layers=(0,))),
         "hold a 1x1 patch grid"),
        (write_grid_store(tmp_path / "nosize.zarr", {k: np.zeros((1, 17, DIM)) for k in light},
                          meta=grid_meta(layers=(0,), preprocessing={})),
         "records no input size"),
    ]
    for path, message in cases:
        r = runner.invoke(app, ["correspond", "--store", str(path), "--pairs", str(pairs), "--layers", "all",
                                "--out", str(tmp_path / "o")])
        assert r.exit_code == 2 and message in r.output, r.output
        assert not (tmp_path / "o").exists()


@pytest.mark.reliability_bad_input
def test_an_unwritten_block_holding_a_named_image_exits_2(tmp_path: Path) -> None:
    tokens = {f"val/{i}.png": np.ones((2, 17, DIM)) for i in range(4)}
    path = write_grid_store(tmp_path / "s.zarr", tokens, skip_blocks=(1,))
    from epcache.store import open_store

    with open_store(path) as st:
        ids = st.read_ids("val")
    ok = _pairs(tmp_path, [(ids[0], ids[1], 8, 8, 8, 8)])
    r = runner.invoke(app, ["correspond", "--store", str(path), "--pairs", str(ok), "--layers", "0"])
    assert r.exit_code == 0, r.output
    bad = _pairs(tmp_path, [(ids[0], ids[2], 8, 8, 8, 8)])
    r = runner.invoke(app, ["correspond", "--store", str(path), "--pairs", str(bad), "--layers", "0"])
    assert r.exit_code == 2 and "block 1 (rows 2..3) not written" in r.output, r.output


def test_a_missing_pairs_file_exits_2(store: Path, tmp_path: Path) -> None:
    r = runner.invoke(app, ["correspond", "--store", str(store), "--pairs", str(tmp_path / "none.csv")])
    assert r.exit_code == 2 and "no such file" in r.output
