"""Per-class accuracy, the confusion matrix, --metric, and figures drawn only when they hold something."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")

from probe_helpers import config, write_store
from solver_helpers import class_store

from epcache.errors import ConfigError
from epcache.probe import probe_store
from epcache.probe.results.metrics import CONFUSION_MAX_CLASSES, MetricsAccumulator, metrics_from_logits
from epcache.probe.results.ranking import best_row, rank_rows
from epcache.probe.solvers._knn import knn_predict, knn_table
from epcache.report import write_report


def test_accumulated_confusion_is_the_count_of_label_prediction_pairs() -> None:
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(3, 50, 6, generator=g), torch.randint(0, 6, (50,), generator=g)
    acc = MetricsAccumulator(3, 6, torch.device("cpu"), confusion=True)
    acc.update(logits[:, :20], labels[:20])
    acc.update(logits[:, 20:], labels[20:])
    for k, m in enumerate(acc.metrics()):
        want = np.zeros((6, 6), np.int64)
        np.add.at(want, (labels.numpy(), logits[k].argmax(-1).numpy()), 1)
        assert np.array_equal(np.array(m.confusion), want)
        diag = np.diag(want) / want.sum(1)
        assert m.per_class == pytest.approx(tuple(diag.tolist()))  # the matrix agrees with the per-class accuracy
        assert m.to_json()["confusion"] == want.tolist()
    assert "confusion" not in metrics_from_logits(logits[0], labels, 6).to_json()  # asked for: eval only
    many = CONFUSION_MAX_CLASSES + 1
    big = metrics_from_logits(torch.randn(8, many), torch.arange(8), many, confusion=True)
    assert big.confusion is None and "confusion" not in big.to_json()  # not stored above 100 classes


def test_knn_confusion_is_that_of_its_predictions() -> None:
    g = torch.Generator().manual_seed(1)
    bank, queries = torch.randn(40, 8, generator=g), torch.randn(30, 8, generator=g)
    yb, yq = torch.randint(0, 3, (40,), generator=g), torch.randint(0, 3, (30,), generator=g)
    table = knn_table(bank, yb, queries, yq, ks=[1, 5], temperatures=[0.07, 0.5], num_classes=3, confusion=True)
    pred = knn_predict(bank, yb, queries, k=5, temperature=0.5, num_classes=3)
    want = np.zeros((3, 3), np.int64)
    np.add.at(want, (yq.numpy(), pred.numpy()), 1)
    assert np.array_equal(np.array(table.metrics(5, 0.5).confusion), want)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("classes")
    store = write_store(tmp / "s.zarr", n_train=48, n_val=16, classes=["cat", "dog", "eel", "fox"])
    trained = tmp / "trained"
    probe_store(config(store, head=("linear", "ep"), epochs=2, layers=(0, 1), out=str(trained)), progress=False)
    solvers, knn = tmp / "solvers", tmp / "knn"
    features = class_store(tmp / "c.zarr", n_train=64, n_val=32)
    probe_store(config(features, head=("knn", "ridge"), out=str(solvers)), progress=False)
    probe_store(config(features, head=("knn",), out=str(knn)), progress=False)
    return {"trained": trained, "solvers": solvers, "knn": knn}


def _rows(run: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run / "results.jsonl").read_text().splitlines()]


def _section(md: str, name: str) -> str:
    return md.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]


def test_trained_run_shows_curves_per_class_names_and_confusion(runs: dict[str, Path]) -> None:
    rep = write_report(runs["trained"])
    md = rep.markdown.read_text()
    names = {p.name for p in rep.figures}
    assert {"curves.png", "confusion.png", "top1_vs_params.png"} <= names
    assert all((rep.markdown.parent / n).stat().st_size > 0 and f"]({n})" in md for n in names)
    best = best_row(rank_rows(_rows(runs["trained"]))[0])
    per_class = _section(md, "Per class (best config)")
    assert f"`{best['id'][:10]}`" in per_class
    table = [c.split("|")[1:-1] for c in per_class.splitlines() if c.startswith("| ") and c[2].isdigit()]
    assert [c[1].strip() for c in table] == ["cat", "dog", "eel", "fox"]  # names from the store
    conf = best["metrics"]["eval"]["confusion"]
    assert [int(c[2]) for c in table] == [sum(r) for r in conf]  # samples per class from the stored counts
    assert [c[3].strip() for c in table] == [f"{100 * a:.2f}" for a in best["metrics"]["eval"]["per_class"]]


def test_metric_changes_the_numbers_shown_never_the_best(runs: dict[str, Path], tmp_path: Path) -> None:
    top1 = write_report(runs["trained"], tmp_path / "a", figures=False).markdown.read_text()
    mpc = write_report(runs["trained"], tmp_path / "b", figures=False, metric="mean-per-class").markdown.read_text()
    best = best_row(rank_rows(_rows(runs["trained"]))[0])
    for md in (top1, mpc):
        assert f"`{best['id'][:10]}`" in _section(md, "Headline")
        first = next(x for x in _section(md, "All configs").splitlines() if x.startswith("| `"))
        assert first.startswith(f"| `{best['id'][:10]}`")  # the same ranking whatever the metric
    assert "| holdout mean-per-class | eval mean-per-class | oracle top-1 |" in mpc
    bal = 100 * best["metrics"]["eval"]["balanced_acc"]
    assert f"eval mean-per-class {bal:.2f} %" in _section(mpc, "Headline")
    assert f"eval top-1 {100 * best['metrics']['eval']['top1']:.2f} %" in _section(top1, "Headline")
    with pytest.raises(ConfigError, match="mean-per-class"):
        write_report(runs["trained"], tmp_path / "c", metric="balanced")


def test_solver_only_run_has_no_learning_curves(runs: dict[str, Path]) -> None:
    rep = write_report(runs["solvers"])
    md = rep.markdown.read_text()
    names = {p.name for p in rep.figures}
    assert "curves.png" not in names and not (rep.markdown.parent / "curves.png").exists()
    assert "curves.png" not in md
    assert "confusion.png" in names  # solver rows score eval through the same counts
    best = best_row(rank_rows(_rows(runs["solvers"]))[0])
    assert sum(map(sum, best["metrics"]["eval"]["confusion"])) == best["metrics"]["eval"]["n"]
    knn = write_report(runs["knn"])
    assert {p.name for p in knn.figures} == {"top1_vs_layer.png", "confusion.png"}  # k-NN has no parameters
    assert "top1_vs_params.png" not in knn.markdown.read_text()


def test_many_classes_say_why_there_is_no_matrix(runs: dict[str, Path], tmp_path: Path) -> None:
    row = _rows(runs["solvers"])[0]
    per_class = [0.5] * (CONFUSION_MAX_CLASSES + 1)
    ev = {k: v for k, v in row["metrics"]["eval"].items() if k != "confusion"}
    row["metrics"] = {"holdout": row["metrics"]["holdout"], "eval": {**ev, "per_class": per_class}}
    (tmp_path / "run").mkdir()
    (tmp_path / "run/results.jsonl").write_text(json.dumps(row) + "\n")
    rep = write_report(tmp_path / "run")
    md = rep.markdown.read_text()
    assert f"not stored for more than {CONFUSION_MAX_CLASSES} classes" in md
    assert "confusion.png" not in md and "confusion.png" not in {p.name for p in rep.figures}
    assert f"| {CONFUSION_MAX_CLASSES} | {CONFUSION_MAX_CLASSES} | - | 50.00 |" in md  # store's names differ: indices
