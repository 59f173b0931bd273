"""Metrics on hand-made predictions, holdout / low-shot selection, and batch streaming."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from probe_helpers import write_store

from epcache.probe.data.reads import InputRead
from epcache.probe.data.select import split_train
from epcache.probe.data.stream import BatchStream, MemorySource, StoreSource, prefetch
from epcache.probe.results.metrics import mean_std, metrics_from_counts, metrics_from_logits
from epcache.store import open_store, select_tokens
from epcache.store.layout.tokens import to_torch


def test_metrics_on_hand_made_predictions() -> None:
    # 6 classes, 8 samples; logits built so the ranking of classes per sample is explicit
    labels = torch.tensor([0, 0, 1, 1, 2, 3, 3, 3])
    rankings = [
        [0, 1, 2, 3, 4, 5],  # top-1 right
        [1, 2, 3, 4, 0, 5],  # top-5 right (rank 5)
        [1, 0, 2, 3, 4, 5],  # top-1 right
        [5, 0, 2, 3, 4, 1],  # wrong at top-5 (rank 6)
        [2, 0, 1, 3, 4, 5],  # top-1 right
        [0, 3, 1, 2, 4, 5],  # top-5 right
        [0, 1, 2, 4, 5, 3],  # wrong at top-5
        [3, 0, 1, 2, 4, 5],  # top-1 right
    ]
    logits = torch.zeros(8, 6)
    for i, order in enumerate(rankings):
        for rank, c in enumerate(order):
            logits[i, c] = 10.0 - rank
    m = metrics_from_logits(logits, labels, 6)
    assert m.n == 8
    assert m.top1 == pytest.approx(4 / 8)
    assert m.top5 == pytest.approx(6 / 8)
    assert m.per_class == (0.5, 0.5, 1.0, pytest.approx(1 / 3), None, None)  # classes 4, 5 have no samples
    assert m.balanced_acc == pytest.approx((0.5 + 0.5 + 1.0 + 1 / 3) / 4)
    assert metrics_from_logits(logits[:, :4], labels, 4).top5 is None  # C < 5
    counts = metrics_from_counts(np.array([1, 0]), None, np.array([1, 3]))
    assert counts.top1 == 0.25 and counts.balanced_acc == 0.5
    assert mean_std([0.5, 0.7]) == (pytest.approx(0.6), pytest.approx(np.std([0.5, 0.7], ddof=1)))
    assert mean_std([0.5]) == (0.5, 0.0)


def test_holdout_is_stratified_seeded_and_disjoint() -> None:
    labels = np.repeat(np.arange(5), [10, 20, 30, 40, 50])
    usable = np.ones(len(labels), bool)
    usable[:3] = False
    a = split_train(labels, usable, classes=list("abcde"), holdout=0.1, seed=0)
    b = split_train(labels, usable, classes=list("abcde"), holdout=0.1, seed=0)
    c = split_train(labels, usable, classes=list("abcde"), holdout=0.1, seed=1)
    assert np.array_equal(a.holdout, b.holdout) and not np.array_equal(a.holdout, c.holdout)
    assert np.bincount(labels[a.holdout]).tolist() == [1, 2, 3, 4, 5]  # round(0.1 * n), class a has 7 usable
    assert not set(a.holdout) & set(a.train) and not set(a.holdout) & {0, 1, 2}
    assert len(a.train) + len(a.holdout) == usable.sum()
    shots = split_train(labels, usable, classes=list("abcde"), holdout=0.1, seed=0, shots=8)
    assert np.array_equal(shots.holdout, a.holdout)  # the holdout does not depend on the shot count
    assert np.bincount(labels[shots.train]).tolist() == [6, 8, 8, 8, 8]
    assert any("fewer than 8" in n for n in shots.notes)
    frac = split_train(labels, usable, classes=list("abcde"), holdout=0.1, seed=0, fraction=0.5)
    assert np.bincount(labels[frac.train]).tolist() == [3, 9, 14, 18, 23]
    tiny = split_train(labels, usable, classes=list("abcde"), holdout=0.05, seed=0)
    assert np.bincount(labels[tiny.holdout]).tolist() == [1, 1, 2, 2, 3]  # round(0.05 n), at least 1 per class
    assert any("too few samples for 0.05 in 1 of 5 classes ('a'); each holds out 1" in n for n in tiny.notes)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_store(tmp_path_factory.mktemp("stream") / "s.zarr", n_train=100, n_val=20, views=3, chunk_samples=8)


def make_stream(store: Path, rows: np.ndarray, selections: set[str], *, memory: bool = False, **kw: object):
    st = open_store(store)
    plan = InputRead(frozenset(selections), st.meta.layout)
    src = MemorySource.load(st, "train", 1, plan, rows, all_views=True) if memory else StoreSource(st, "train", 1, plan)
    return st, plan, BatchStream(src, rows, st.read_labels("train"), batch_size=16, device=torch.device("cpu"),
                                 dtype=torch.float32, data_seed=0, views=3, **kw)  # type: ignore[arg-type]


def test_training_epochs_cover_each_row_once_in_a_seeded_order(store: Path) -> None:
    rows = np.arange(3, 100, 2)  # 49 rows spread over every chunk
    st, _, stream = make_stream(store, rows, {"patch"}, shuffle_chunks=2)
    labels = st.read_labels("train")
    e0 = list(stream.train_epoch(0))
    assert len(e0) == 49 // 16 == stream.steps_per_epoch()
    assert all(b.x.shape == (16, 16, 16) and b.x.dtype == torch.float32 for b in e0)
    again = list(stream.train_epoch(0))
    assert all(torch.equal(a.x, b.x) for a, b in zip(e0, again, strict=True))
    e1 = list(stream.train_epoch(1))
    assert not torch.equal(e0[0].x, e1[0].x)
    # every batch row is a distinct training row; recover which by matching tokens of the chosen view
    full = to_torch(st.read_tokens("train", 1)).float()[:, :, 1:]  # [N, V, 16, D] patch tokens
    seen = []
    for b in e0:
        for x, y in zip(b.x, b.y, strict=True):
            match = (full == x).flatten(2).all(-1).nonzero()
            assert len(match) == 1
            row, view = match[0].tolist()
            assert labels[row] == y and row in rows
            seen.append((row, view))
    assert len({r for r, _ in seen}) == len(seen) == 48
    assert len({v for _, v in seen}) > 1  # augmented views are used in training
    _, _, memory = make_stream(store, rows, {"patch"}, memory=True, shuffle_chunks=2)
    assert all(torch.equal(a.x, b.x) for a, b in zip(e0, memory.train_epoch(0), strict=True))


def test_eval_pass_is_ordered_view_zero_and_complete(store: Path) -> None:
    rows = np.arange(0, 100, 3)
    st, plan, stream = make_stream(store, rows, {"cls", "gap"})
    assert plan.mode == "vectors"
    batches = list(stream.eval_pass())
    assert [len(b.y) for b in batches] == [16, 16, 2]
    x = torch.cat([b.x for b in batches])
    tokens = to_torch(st.read_tokens("train", 1)[rows, 0]).float()
    torch.testing.assert_close(plan.derive(x, "cls"), select_tokens(tokens, st.meta.layout, "cls"))
    torch.testing.assert_close(plan.derive(x, "gap"), select_tokens(tokens, st.meta.layout, "gap"))
    torch.testing.assert_close(plan.derive(x, "cls+gap")[:, 16:], select_tokens(tokens, st.meta.layout, "gap"))


def test_input_plan_keeps_the_smallest_sufficient_tokens() -> None:
    from probe_helpers import make_meta

    layout = make_meta().layout
    assert InputRead(frozenset({"patch", "gap"}), layout).mode == "patch"
    assert InputRead(frozenset({"patch", "cls"}), layout).mode == "all"
    assert InputRead(frozenset({"all"}), layout).mode == "all"
    assert InputRead(frozenset({"cls+gap"}), layout).vectors == ("cls", "gap")


def test_prefetch_reraises_reader_errors_and_stops_early() -> None:
    def broken():
        yield 1
        raise OSError("disk gone")

    it = prefetch(broken, 2)
    assert next(it) == 1
    with pytest.raises(OSError, match="disk gone"):
        next(it)
    endless = prefetch(lambda: iter(range(10**9)), 2)
    assert [next(endless) for _ in range(3)] == [0, 1, 2]
    endless.close()  # returns: the reader thread is stopped and joined
