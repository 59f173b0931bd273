"""`epcache probe --tap`: a sweep on a tap store, a series over taps, and the report drawing taps beside blocks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from extract_helpers import tiny_config
from series_helpers import series_data
from typer.testing import CliRunner

from epcache.board.keys import input_label
from epcache.cli import app
from epcache.errors import ConfigError
from epcache.extract import extract_store
from epcache.probe import ProbeConfig, probe_store
from epcache.probe.results.intervals import top1_interval
from epcache.probe.results.ranking import rank_rows
from epcache.report import write_report
from epcache.report._tables import group_seeds
from epcache.report._taps import TAP_FIGURE, TAP_ORDER, tap_layer_points
from epcache.store import open_store

runner = CliRunner()
TAPS = "attn_out,attn_norm,mlp_hidden,mlp_out"
FAST = {"epochs": 2, "warmup": 1, "min_steps": 2, "k": (5,), "select": "holdout", "holdout": 0.25, "device": "cpu",
        "linear_fit": "sgd", "save_heads": False}
FAST_CLI = ["--head", "knn,linear", "--layers", "all", "--epochs", "2", "--warmup", "1", "--min-steps", "2", "--k", "5",
            "--select", "holdout", "--holdout", "0.25", "--linear-fit", "sgd", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A store with every tap, one with a pooled tap and one without taps, from one tiny ViT."""
    root = tmp_path_factory.mktemp("taps")
    data = series_data(root / "data")
    out = {"tapped": root / "tapped.zarr", "gap": root / "gap.zarr", "plain": root / "plain.zarr"}
    for name, taps in (("tapped", TAPS), ("gap", "mlp_hidden:gap"), ("plain", None)):
        assert extract_store(tiny_config(data, out[name], taps=taps), progress=False).status == "complete"
    return out


@pytest.fixture(scope="module")
def series(stores: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("runs") / "taps"
    r = runner.invoke(app, ["probe", "--store", str(stores["tapped"]), "--tap", "all", "--out", str(runs), *FAST_CLI])
    assert r.exit_code == 0, r.output
    assert f"epcache report {runs}" in r.output
    return runs


def _rows(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]


def test_a_tap_probe_equals_the_tap_store_probed_by_hand(stores: dict[str, Path]) -> None:
    store = stores["tapped"]
    via_tap = probe_store(ProbeConfig(store=str(store), tap="mlp_hidden", head=("knn", "linear"), layers=("all",),
                                      **FAST), progress=False)
    with open_store(store, tap="mlp_hidden") as ts, open_store(store) as block:
        location, tap_key, block_key = ts.location, ts.provenance, block.provenance
    by_hand = probe_store(ProbeConfig(store=location, head=("knn", "linear"), layers=("all",), **FAST),
                          progress=False)
    assert [r["id"] for r in via_tap.rows] == [r["id"] for r in by_hand.rows] and via_tap.rows
    for a, b in zip(via_tap.rows, by_hand.rows, strict=True):
        assert a["metrics"] == b["metrics"] and a["name"] == b["name"]
        assert a["data"]["tap"] == "mlp_hidden" and a["store"]["provenance"] == tap_key != block_key
        assert input_label(a).startswith(f"L{a['config']['layer']} mlp_hidden ")
    assert any("layers of tap mlp_hidden" in note for note in via_tap.notes)
    block_rows = probe_store(ProbeConfig(store=str(store), head=("knn",), layers=(1,), **FAST), progress=False).rows
    assert {r["data"]["tap"] for r in block_rows} == {"block"}
    assert input_label(block_rows[0]) == f"L1 {block_rows[0]['input']['tokens']}"  # block rows: labels as before


def test_the_tap_series_writes_one_run_per_tap(series: Path, stores: dict[str, Path]) -> None:
    assert sorted(p.name for p in series.iterdir()) == sorted(TAP_ORDER)
    for run in series.iterdir():
        rows = _rows(run)
        assert {r["data"]["tap"] for r in rows} == {run.name}
        with open_store(stores["tapped"], tap=None if run.name == "block" else run.name) as st:
            assert {r["store"]["provenance"] for r in rows} == {st.provenance}
        assert {r["config"]["layer"] for r in rows} == {0, 1}


def test_the_report_of_a_tap_series_has_every_tap_and_block_by_the_ranking(series: Path) -> None:
    rows = [row for run in sorted(series.iterdir()) for row in _rows(run)]
    points = tap_layer_points(group_seeds(rows))
    assert [(p.tap, p.layer) for p in points] == [(t, layer) for t in TAP_ORDER for layer in (0, 1)]
    for p in points:
        cell = [r for r in rows if r["data"]["tap"] == p.tap and r["config"]["layer"] == p.layer]
        top = rank_rows(cell)[0]  # the one ranking, on this cell's rows alone
        assert p.group.key == top.key and p.eval_top1 == top.rows[0]["metrics"]["eval"]["top1"]
        assert (p.eval_lo, p.eval_hi) == top1_interval([r["metrics"]["eval"] for r in top.rows])
        assert p.x == pytest.approx(p.layer + 0.15 * TAP_ORDER.index(p.tap))
    rep = write_report(series, series / "report")
    text = rep.markdown.read_text()
    assert [f.name for f in rep.figures] == [TAP_FIGURE] and rep.figures[0].read_bytes()[:4] == b"\x89PNG"
    for p in points:
        assert f"| {p.tap} | {p.layer} | `{p.group.rows[0]['id'][:10]}` |" in text
        assert f"{100 * p.eval_top1:.2f} | [{100 * p.eval_lo:.1f}, {100 * p.eval_hi:.1f}] |" in text
    one = write_report(series / "mlp_hidden")  # one tap run: its usual report, plus its tap points
    assert TAP_FIGURE in [f.name for f in one.figures] and "## Best per tap and block" in one.markdown.read_text()


@pytest.mark.parametrize(("store", "args", "message"), [
    ("tapped", ["--tap", "nope"], "its taps: attn_out, attn_norm, mlp_hidden, mlp_out"),
    ("tapped", ["--tap", "block,nope"], "its taps: attn_out, attn_norm, mlp_hidden, mlp_out"),
    ("plain", ["--tap", "mlp_hidden"], "its taps: none"),
    ("plain", ["--tap", "all"], "has no taps"),
    ("gap", ["--tap", "mlp_hidden", "--head", "ep"], "extracted pooled"),
    ("gap", ["--tap", "block,mlp_hidden", "--head", "ep", "--tokens", "patch"], "extracted pooled"),
])
def test_refusals_exit_2_before_any_work(stores: dict[str, Path], tmp_path: Path, store: str, args: list[str],
                                         message: str) -> None:
    out = tmp_path / "run"
    r = runner.invoke(app, ["probe", "--store", str(stores[store]), "--out", str(out), "--no-progress",
                            "--device", "cpu", *args])
    assert r.exit_code == 2, r.output
    assert message in " ".join(r.output.split())
    assert not list(out.rglob("results*.jsonl"))  # nothing trained


def test_board_labels_tell_taps_apart() -> None:
    row = {"config": {"layer": 5, "tokens": "cls"}, "input": {"tokens": "cls", "layer_mix": "none", "layers": [5]}}
    assert input_label(row) == "L5 cls" == input_label({**row, "data": {"tap": "block"}})
    assert input_label({**row, "data": {"tap": "mlp_hidden"}}) == "L5 mlp_hidden cls"


def test_a_grid_file_sets_the_tap_for_the_whole_sweep(stores: dict[str, Path], tmp_path: Path) -> None:
    grid = tmp_path / "g.toml"
    grid.write_text('head = "knn"\nlayers = [1]\n[[grid]]\ntap = "attn_norm"\n')
    rows = probe_store(ProbeConfig(store=str(stores["tapped"]), grid=str(grid), **FAST), progress=False).rows
    assert {r["data"]["tap"] for r in rows} == {"attn_norm"}
    grid.write_text('head = "knn"\n[[grid]]\ntap = "attn_norm"\n[[grid]]\ntap = "mlp_out"\n')
    with pytest.raises(ConfigError, match="tap differs between"):
        probe_store(ProbeConfig(store=str(stores["tapped"]), grid=str(grid), **FAST), progress=False)
