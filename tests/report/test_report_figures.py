"""Figures a reviewer accepts: labels inside the axes and apart, one legend order, honest axes, model titles.

Checked with matplotlib's renderer (``get_window_extent``) on figures built from synthetic
results rows that reproduce the hard cases: ``mhca h8`` at the largest size and ~100 %,
two EP variants 2 % apart, a single probed layer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from probe_helpers import write_store

from epcache.report._attention import attention_figure
from epcache.report._model import model_title
from epcache.report._plots import KIND_ORDER, curves_figure, layers_figure, params_figure
from epcache.report._tables import group_seeds


def _row(i: int, kind: str, options: dict[str, Any], layer: int, top1: float, params: int, store: Path) -> dict:
    tokens = options.pop("tokens", "patch" if kind != "linear" else "cls")
    head = kind if not options else f"{kind}({','.join(f'{k}={v}' for k, v in options.items())})"
    curve = list(np.linspace(0.3, top1, 6))
    return {
        "id": f"{i:04x}{'a' * 12}", "name": f"{head} layer={layer} tokens={tokens} lr=0.01 seed=0",
        "config": {"kind": kind, "head": head, "head_options": options, "layer": layer, "tokens": tokens,
                   "lr": 0.01, "wd": 0.0, "seed": 0},
        "store": {"path": str(store), "backbone": "vit_toy", "provenance": "ab" * 32},
        "params": params, "flops": params * 3,
        "metrics": {"holdout": {"top1": top1, "balanced_acc": top1}, "eval": {"top1": top1, "balanced_acc": top1}},
        "oracle": {"eval_top1": top1, "epoch": 5}, "selected_epoch": 5,
        "curves": {"eval_top1": curve, "holdout_top1": curve},
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_store(tmp_path_factory.mktemp("fig") / "s.zarr", n_train=16, n_val=8)


def _rows(store: Path, layers: tuple[int, ...]) -> list[dict]:
    rows = []
    for layer in layers:
        rows += [
            _row(len(rows) + 1, "linear", {"tokens": "cls"}, layer, 0.40, 772, store),
            _row(len(rows) + 2, "linear", {"tokens": "gap"}, layer, 0.53, 772, store),
            _row(len(rows) + 3, "ep", {"queries": 4, "d_out": 1}, layer, 0.86, 38_211, store),
            _row(len(rows) + 4, "ep", {"queries": 16, "d_out": 1}, layer, 0.88, 40_708, store),
            _row(len(rows) + 5, "mhca", {"num_heads": 8}, layer, 0.995, 149_188, store),
        ]
    return rows


def _check_layout(fig: Any, title: str) -> None:
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    ax = fig.axes[0]
    inside, page = ax.get_window_extent(r), fig.bbox
    labels = [t for t in ax.texts if t.get_text()]
    boxes = [t.get_window_extent(r) for t in labels]
    for t, b in zip(labels, boxes, strict=True):
        assert inside.x0 <= b.x0 and b.x1 <= inside.x1 and inside.y0 <= b.y0 and b.y1 <= inside.y1, t.get_text()
    for i, a in enumerate(boxes):
        assert not any(a.overlaps(b) for b in boxes[i + 1 :]), labels[i].get_text()
    legend = ax.get_legend().get_window_extent(r)
    assert page.x0 <= legend.x0 and legend.x1 <= page.x1 and legend.y0 >= page.y0
    assert not legend.overlaps(inside)  # the legend never covers a line
    sup = fig._suptitle
    assert sup is not None and title in sup.get_text()
    sb = sup.get_window_extent(r)
    assert page.x0 <= sb.x0 and sb.x1 <= page.x1 and sb.y1 <= page.y1 and not sb.overlaps(inside)
    lo, hi = ax.get_ylim()
    assert lo >= 0 and hi <= 101.5 and max(ax.get_yticks()) <= 100  # no tick past 100 %


def test_titles_name_the_recorded_model(store: Path) -> None:
    title = model_title(_rows(store, (0,))[0])
    assert title == "vit_toy, random init"  # the store's backbone as recorded, weights included
    moved = dict(_rows(store, (0,))[0], store={"path": str(store.parent / "gone.zarr"), "backbone": "vit_toy"})
    assert model_title(moved) == "vit_toy"  # store moved: the row's name, nothing invented


@pytest.mark.parametrize("layers", [(0, 1), (1,)])
def test_figures_keep_labels_inside_and_apart(store: Path, layers: tuple[int, ...]) -> None:
    import matplotlib.pyplot as plt

    groups = group_seeds(_rows(store, layers))
    title = model_title(groups[0].rows[0])
    for build in (params_figure, layers_figure, curves_figure):
        fig = build(groups, title=f"what\n{title}")
        try:
            _check_layout(fig, title)
            legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
            kinds = [t for t in legend if t in KIND_ORDER]
            if kinds:
                assert kinds == ["linear", "ep", "mhca"]  # one legend order in every figure
        finally:
            plt.close(fig)
    fig = params_figure(groups, title=title)
    texts = [t.get_text() for t in fig.axes[0].texts]
    plt.close(fig)
    assert any(t.startswith("mhca h8\nL") and "lr 0.01" in t for t in texts)  # short label, layer and lr


def test_single_layer_says_so(store: Path) -> None:
    import matplotlib.pyplot as plt

    fig = layers_figure(group_seeds(_rows(store, (1,))), title="t")
    texts = [t.get_text() for t in fig.axes[0].texts]
    plt.close(fig)
    assert "only block 1 was probed" in texts and "ep q16" in texts


def test_attention_figure_shares_one_scale_and_labels_rows() -> None:
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    maps = [rng.dirichlet(np.ones(16), size=4).reshape(4, 4, 4) for _ in range(3)]
    pictures = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    captions = [f"true c{i}\npred c{(i + 1) % 3}" for i in range(3)]
    fig = attention_figure(maps, pictures, captions, title="mhca h4 L0\nvit_toy, random init", n_pred=4,
                           kind="mhca")
    try:
        fig.canvas.draw()
        r = fig.canvas.get_renderer()
        grid = [ax for ax in fig.axes if ax.get_title() or ax.images]
        heads = [ax.get_title() for ax in grid if ax.get_title()]
        assert heads == ["image", "mean", "h0", "h1", "h2", "h3"]  # MHCA columns are heads
        clims = {im.get_clim() for ax in grid for im in ax.images if im.get_cmap().name == "inferno"}
        assert len(clims) == 1  # one colour scale for every panel
        bar = [ax for ax in fig.axes if ax.get_ylabel() == "attention per patch"]
        assert bar, "no colour bar"
        sup = fig._suptitle.get_window_extent(r)
        for ax in grid:
            if ax.get_title():
                assert not ax.title.get_window_extent(r).overlaps(sup)  # title clear of the column headers
        rows = [ax.get_ylabel() for ax in grid if ax.get_ylabel()]
        assert rows == captions  # true / predicted label per row
        for ax in grid:
            if ax.get_ylabel():
                assert ax.yaxis.label.get_window_extent(r).x0 >= fig.bbox.x0
    finally:
        plt.close(fig)


def test_summary_and_report_tables_share_columns_units_and_fit_100_columns(store: Path, tmp_path: Path) -> None:
    from epcache.probe.results.rows import format_summary
    from epcache.report import write_report

    rows = _rows(store, (0, 1))
    one = format_summary(rows[:1])
    assert one.startswith("1 config in 1 seed group;") and "config(s)" not in one
    seeded = [*rows, *({**r, "id": r["id"][:-1] + "f", "name": r["name"].replace("seed=0", "seed=1"),
                        "config": {**r["config"], "seed": 1}} for r in rows)]
    text = format_summary(seeded)
    assert text.startswith("20 configs in 10 seed groups;") and "MFLOP/img" in text
    assert max(len(line) for line in text.splitlines()) <= 100
    header = text.splitlines()[1].split()
    assert header[:4] == ["id", "config", "params", "MFLOP/img"] and header.index("holdout") < header.index("eval")
    seeds = text.split("seeds (mean ± std):\n", 1)[1].splitlines()[0].split()
    assert seeds.index("holdout") < seeds.index("eval")  # the same order as the main table
    assert "linear(tokens=" not in text and "ep q16 L1 lr=0.01" in text  # short labels, nothing said twice
    (tmp_path / "run").mkdir()
    (tmp_path / "run/results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in seeded))
    md = write_report(tmp_path / "run", figures=False).markdown.read_text()
    table = [line for line in md.splitlines() if line.startswith("| id |")]
    assert table and all(t == "| id | config | params | MFLOP/img | seeds | holdout top-1 | eval top-1 | oracle top-1 |"
                         for t in table)
    assert "20 configs in 10 groups" in md and f"| `{rows[0]['id'][:10]}` |" in md


def test_pooled_output_is_a_category_not_a_block(store: Path) -> None:
    import matplotlib.pyplot as plt

    rows = _rows(store, (0, 4))
    rows += [_row(90, "linear", {"tokens": "pooled"}, -1, 0.70, 772, store),
             _row(91, "ep", {"tokens": "pooled", "queries": 4}, -1, 0.75, 38_211, store)]
    fig = layers_figure(group_seeds(rows), title="t")
    try:
        _check_layout(fig, "t")
        ax = fig.axes[0]
        drawn = [(list(map(float, line.get_xdata())), line.get_linestyle()) for line in ax.lines
                 if line.get_marker() not in (None, "None", "")]
        blocks = [xs for xs, style in drawn if len(xs) > 1]
        assert blocks and all(xs == [0.0, 4.0] for xs in blocks)  # lines run over block indices only
        pooled = [xs[0] for xs, style in drawn if len(xs) == 1]
        assert len(pooled) == 2 and all(x > 4 for x in pooled)  # right of the blocks, not at "block -1"
        assert all(style in ("None", "none", "") for xs, style in drawn if len(xs) == 1)  # no line into a block
        ticks = {t.get_text(): t.get_position()[0] for t in ax.get_xticklabels()}
        assert ticks["pooled output"] == pooled[0] and "-1" not in ticks
        assert ax.get_xlim()[0] > -1
    finally:
        plt.close(fig)
