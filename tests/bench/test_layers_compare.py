"""bench/layers.py heads: which sweeps it runs, which row each reports, and the table it prints.

No full bench run: the three sweeps run once, in --quick mode, on a tiny generated 2-layer store.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import _layers_compare as lc

from epcache.probe.results.intervals import wilson
from epcache.store import BackboneMeta, SplitSpec, StoreMeta, TokenLayout, create_store

D, T, LAYERS = 16, 5, (0, 1)  # CLS + a 2x2 patch grid; 16 = 8 ALF heads of width 2


def test_each_variant_is_the_defaults_plus_only_the_compared_flags(tmp_path: Path) -> None:
    last, concat, alf = (lc.variant_config(tmp_path, v, quick=False) for v in lc.VARIANTS)
    assert (last.heads.head, last.heads.linear_fit, last.inputs.tokens, last.inputs.layers) == (
        ("linear",), "sgd", ("cls", "gap"), ("last",))
    assert (concat.heads.head, concat.heads.linear_fit, concat.inputs.layers, concat.inputs.layer_mix,
            concat.inputs.tokens) == (("linear",), "sgd", ("all",), ("concat",), ("cls+gap",))
    assert (alf.heads.head, alf.inputs.layers) == (("alf",), ("all",))
    for c in (last, concat, alf):  # recipe auto untouched: its lr grid, length, holdout and selection
        assert (c.optim.recipe, c.optim.lr, c.optim.epochs, c.optim.min_steps, c.data.holdout) == (
            "auto", (), None, None, None)
    quick = lc.variant_config(tmp_path, "alf", quick=True)
    assert (quick.optim.lr, quick.optim.epochs, quick.optim.min_steps) == (
        lc.QUICK["lr"], lc.QUICK["epochs"], lc.QUICK["min_steps"])
    assert quick.optim.recipe == "auto" and quick.heads.head == ("alf",)


def _entry(top1: float, name: str = "x") -> lc.Entry:
    return lc.Entry(name, top1, wilson(round(top1 * 200), 200), 1234, 2.0, 3)


def test_entry_reads_the_selected_rows_eval_top1_interval_and_params() -> None:
    best = {"name": "alf(queries=1) lr=0.01", "params": 39274,
            "metrics": {"eval": {"top1": 0.882, "top1_ci": [0.851, 0.907], "n": 500}, "holdout": {"top1": 0.9}}}
    e = lc.entry(best, [best, best, best], 4.5)
    assert e == lc.Entry("alf(queries=1) lr=0.01", 0.882, (0.851, 0.907), 39274, 4.5, 3)


def test_table_prints_every_variant_per_store_and_alfs_deltas_in_points() -> None:
    results = {"demo": {"last": _entry(0.625), "concat": _entry(0.575), "alf": _entry(0.675)},
               "digits": {"last": _entry(0.86), "concat": _entry(0.88), "alf": _entry(0.88)}}
    assert lc.deltas(results["demo"]) == {"last": 5.0, "concat": 10.0}
    assert lc.deltas(results["digits"]) == {"last": 2.0, "concat": 0.0}  # rounded: a tie prints +0.00, not -0.00
    lines = lc.table(results)
    assert lines[0] == lc.HEADER
    body = lines[1:7]
    assert [ln.split()[:3] for ln in body] == [[s, v, f"{100 * results[s][v].top1:.2f}"]
                                               for s in results for v in lc.VARIANTS]
    lo, hi = results["demo"]["alf"].ci
    assert f"[{100 * lo:.1f}, {100 * hi:.1f}]" in body[2] and "1,234" in body[2]
    assert lines[7] == ""
    assert lines[8:] == ["demo     ALF - last = +5.00 points, ALF - concat = +10.00 points",
                         "digits   ALF - last = +2.00 points, ALF - concat = +0.00 points"]


def _tiny_store(path: Path) -> Path:
    """2 layers of CLS + 4 patches, 3 classes whose mean sits in the deeper layer's CLS and every GAP."""
    meta = StoreMeta(
        backbone=BackboneMeta("vit_tiny.bench", "random-init", "-", "random-init", None, len(LAYERS)),
        layout=TokenLayout(num_prefix=1, cls_index=0, num_registers=0, grid=(2, 2)),
        layers=LAYERS, final_norm=False, dtype="float16", dim=D, num_tokens=T,
    )
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, D)) * 2
    with create_store(path, meta) as st:
        for split, n in (("train", 120), ("val", 60)):
            y = np.arange(n) % 3
            st.add_split(SplitSpec(split, y, [f"{split}{i}" for i in range(n)], ["a", "b", "c"]), chunk_samples=32)
            y = y[st.read_order(split)]
            for b in range(st.split(split).num_blocks):
                lo, hi = st.block_range(split, b)
                for layer in LAYERS:
                    x = rng.standard_normal((hi - lo, 1, T, D)) + layer * centres[y[lo:hi]][:, None, None, :]
                    st.write_block(split, layer, b, x.astype(np.float16))
    return path


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> dict[str, lc.Entry]:
    store = _tiny_store(tmp_path_factory.mktemp("layers") / "tiny.zarr")
    return {v: lc.run_variant(store, v, quick=True) for v in lc.VARIANTS}


def test_quick_sweeps_report_their_selected_config(swept: dict[str, lc.Entry]) -> None:
    lrs = len(lc.QUICK["lr"])
    assert [swept[v].configs for v in lc.VARIANTS] == [2 * lrs, lrs, lrs]  # last: CLS and GAP at every lr
    assert "layer=1" in swept["last"].name and "linear" in swept["last"].name
    assert "mix=concat" in swept["concat"].name and "layers=0,1" in swept["concat"].name
    assert swept["alf"].name.startswith("alf(") and "mix=tokens" in swept["alf"].name
    # concat cls+gap is DINOv2's: every layer's CLS, then the last layer's GAP, (L + 1) D inputs; last: D
    assert swept["concat"].params == (len(LAYERS) + 1) * D * 3 + 3 and swept["last"].params == D * 3 + 3
    for e in swept.values():
        assert e.ci[0] <= e.top1 <= e.ci[1] and e.seconds > 0
        assert e.top1 > 0.6  # the class mean is plain to see: every variant learns it (chance 1/3)
