"""k-NN: scikit-learn parity on a digits store, brute-force parity for cosine, one search = per-pair searches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from solver_helpers import meta, write_tokens

from epcache.errors import ConfigError
from epcache.probe.solvers import knn_predict, knn_table, pool_rows
from epcache.store import open_store


@pytest.fixture(scope="module")
def digits_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sklearn's bundled digits, 64 pixels as ONE patch token (no CLS), train = first 1200, val = the rest."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    m = meta(dim=64, grid=(1, 1), cls=False, dtype="float32")
    tok = X.astype(np.float32)[:, None, :]  # [n, T=1, D=64]
    return write_tokens(tmp_path_factory.mktemp("digits") / "digits.zarr", m,
                        {"train": (tok[:1200], y[:1200]), "val": (tok[1200:], y[1200:])}, chunk_samples=64)


def _pooled(store: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    with open_store(store) as st:
        rows = np.arange(st.split(split).num_samples)
        view = pool_rows(st, split, 0, rows)
        labels = st.read_labels(split)
    return torch.from_numpy(view.features("gap")).double(), torch.from_numpy(labels), rows


@pytest.mark.parametrize("k", [1, 5, 20])
def test_euclidean_uniform_equals_sklearn_kneighbors(digits_store: Path, k: int) -> None:
    from sklearn.neighbors import KNeighborsClassifier

    xtr, ytr, _ = _pooled(digits_store, "train")
    xva, yva, _ = _pooled(digits_store, "val")
    ours = knn_predict(xtr, ytr, xva, k=k, num_classes=10, metric="euclidean", weighting="uniform")
    ref = KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(xtr.numpy(), ytr.numpy()).predict(xva.numpy())
    assert np.array_equal(ours.numpy(), ref)
    table = knn_table(xtr, ytr, xva, yva, ks=[k], temperatures=[1.0], num_classes=10, metric="euclidean",
                      weighting="uniform")
    assert table.metrics(k, 1.0).top1 == pytest.approx(float((ref == yva.numpy()).mean()), abs=0)


def test_cosine_table_equals_brute_force_reference() -> None:
    rng = np.random.default_rng(0)
    C, D = 6, 12
    centres = rng.standard_normal((C, D))
    ytr, yq = rng.integers(C, size=300), rng.integers(C, size=90)
    xtr = centres[ytr] + 1.2 * rng.standard_normal((300, D))
    xq = centres[yq] + 1.2 * rng.standard_normal((90, D))
    ks, temps = [1, 5, 10, 50], [0.07, 0.1, 0.5]
    table = knn_table(torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xq), torch.from_numpy(yq),
                      ks=ks, temperatures=temps, num_classes=C, query_batch=32, bank_chunk=70)
    a = xtr / np.linalg.norm(xtr, axis=1, keepdims=True)
    b = xq / np.linalg.norm(xq, axis=1, keepdims=True)
    sim = b @ a.T  # float64 brute force
    order = np.argsort(-sim, axis=1, kind="stable")
    for i, k in enumerate(ks):
        for j, t in enumerate(temps):
            nn = order[:, :k]
            w = np.exp(np.take_along_axis(sim, nn, 1) / t)  # DINO's exp(s/T): same argmax as the softmax
            votes = np.zeros((len(yq), C))
            np.add.at(votes, (np.repeat(np.arange(len(yq)), k), ytr[nn].ravel()), w.ravel())
            pred = votes.argmax(1)
            expected = np.bincount(yq[pred == yq], minlength=C)
            top5 = np.argsort(-votes, axis=1)[:, :5]
            hit5 = ((top5 == yq[:, None]) & (np.take_along_axis(votes, top5, 1) > 0)).any(1)
            expected5 = np.bincount(yq[hit5], minlength=C)
            assert np.array_equal(table.correct1[i, j], expected), (k, t)
            assert np.array_equal(table.correct5[i, j], expected5), (k, t)


def test_one_search_equals_one_search_per_pair() -> None:
    g = torch.Generator().manual_seed(3)
    xtr, xq = torch.randn(400, 8, generator=g), torch.randn(50, 8, generator=g)
    ytr, yq = torch.randint(0, 5, (400,), generator=g), torch.randint(0, 5, (50,), generator=g)
    ks, temps = [5, 10, 20], [0.07, 0.2]
    table = knn_table(xtr, ytr, xq, yq, ks=ks, temperatures=temps, num_classes=5, weighting="exp")
    for i, k in enumerate(ks):
        for j, t in enumerate(temps):
            pred = knn_predict(xtr, ytr, xq, k=k, temperature=t, num_classes=5, weighting="exp")
            assert table.correct1[i, j].sum() == int((pred == yq).sum())


def test_k_larger_than_bank_is_refused() -> None:
    x, y = torch.randn(10, 4), torch.arange(10) % 2
    with pytest.raises(ConfigError, match="larger than the bank"):
        knn_table(x, y, x, y, ks=[5, 11], temperatures=[0.07], num_classes=2)
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        knn_table(x, y, x, y, ks=[5], temperatures=[0.0], num_classes=2)


def test_accuracy_falling_with_k_is_flagged() -> None:
    from epcache.probe.solvers import SolverInputs, fit_solver
    from epcache.probe.solvers._spec import SolverSettings, SolverSpec

    rng = np.random.default_rng(0)
    a, b, c = np.array([0.0, 0.0]), np.array([100.0, 0.0]), np.array([0.0, 5.0])
    bank = np.concatenate([a + 0.01 * rng.standard_normal((2, 2)), b + 0.01 * rng.standard_normal((6, 2)),
                           c + 0.01 * rng.standard_normal((100, 2))])
    bank_y = np.array([1] * 8 + [0] * 100)
    queries, query_y = np.stack([a, b, c]), np.array([1, 1, 0])  # right at k=1, 2/3 at k=5, 1/3 at k=20
    settings = SolverSettings(0, 0.0, None, "float64", "train", "val", "p", "p")
    options = (("T", (0.07,)), ("k", (1, 5, 20)), ("metric", "euclidean"), ("select", "fixed"),
               ("weighting", "uniform"))
    spec = SolverSpec("knn", options, 0, "gap", None, 0, settings)
    t = torch.from_numpy
    outcome = fit_solver(spec, SolverInputs(t(bank), t(bank_y), None, None, t(queries), t(query_y), 2,
                                            refit_with_holdout=False))
    table = outcome.details["eval_table"]["top1"]
    assert [round(r[0], 4) for r in table] == [1.0, 0.6667, 0.3333]
    assert "falls steadily with k" in outcome.details["warning"]


def test_query_batch_is_halved_when_the_device_runs_out_of_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    from epcache.probe.solvers import _knn

    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(120, 6, generator=g), torch.randint(0, 3, (120,), generator=g)
    q, qy = torch.randn(50, 6, generator=g), torch.randint(0, 3, (50,), generator=g)
    ref = knn_table(x, y, q, qy, ks=[5, 10], temperatures=[0.1], num_classes=3)
    real, seen = _knn.knn_search, []

    def small_device(bank: torch.Tensor, queries: torch.Tensor, k: int, **kw: object) -> object:
        seen.append(queries.shape[0])
        if queries.shape[0] > 8:
            raise torch.OutOfMemoryError("simulated")
        return real(bank, queries, k, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(_knn, "knn_search", small_device)
    got = knn_table(x, y, q, qy, ks=[5, 10], temperatures=[0.1], num_classes=3, query_batch=32)
    assert seen[:3] == [32, 16, 8] and max(seen[3:]) <= 8
    assert np.array_equal(got.correct1, ref.correct1) and np.array_equal(got.correct5, ref.correct5)
