"""The solver heads' ``standardize`` option: scikit-learn's StandardScaler fit on the fit rows only, then the solver.

Linear heads are compared in raw coordinates: scikit-learn's coefficients on standardised
features are mapped back (w / scale, b − (w / scale)·mean) and set beside epcache's saved state.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from solver_helpers import class_store
from typer.testing import CliRunner

from epcache.cli import app
from epcache.errors import ConfigError
from epcache.probe.solvers import SolverInputs, expand_solver_specs, fit_solver, load_solver_head, pool_rows
from epcache.probe.solvers._ridge import BIAS_VALUE, STD_EPS
from epcache.probe.solvers._spec import SolverSettings, SolverSpec
from epcache.probe.solvers._standardize import Standardizer
from epcache.store import open_store

SETTINGS = SolverSettings(data_seed=0, holdout=0.0, fraction=None, dtype="float64", train_split="train",
                          eval_split="val", store_provenance="p", eval_provenance="p")


def _clusters(n: int, D: int = 8, C: int = 3, seed: int = 0, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian classes whose features differ in scale by 10^4 (the case standardising is for), offset by ``shift``."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % C
    centres = np.random.default_rng(99).normal(size=(C, D))
    x = (centres[y] + rng.normal(size=(n, D))) * np.logspace(-2, 2, D) + 5.0 + shift
    return x, y


def _spec(kind: str, **options: object) -> SolverSpec:
    return SolverSpec(kind, tuple(sorted(options.items())), 0, "gap", None, 0, SETTINGS)


def _inputs(fit: tuple[np.ndarray, np.ndarray], ev: tuple[np.ndarray, np.ndarray],
            hold: tuple[np.ndarray, np.ndarray] | None = None, refit_with_holdout: bool = True) -> SolverInputs:
    t = torch.from_numpy
    return SolverInputs(t(fit[0]), t(fit[1]), None if hold is None else t(hold[0]),
                        None if hold is None else t(hold[1]), t(ev[0]), t(ev[1]), 3, refit_with_holdout)


def _sklearn_logreg_raw(x: np.ndarray, y: np.ndarray, C: float) -> tuple[np.ndarray, np.ndarray, object]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pipe = make_pipeline(StandardScaler(), LogisticRegression(C=C, tol=1e-12, max_iter=20000)).fit(x, y)
    scaler, lr = pipe[0], pipe[1]
    w = lr.coef_ / scaler.scale_
    b = lr.intercept_ - w @ scaler.mean_
    return w, b - b.mean(), pipe  # softmax ignores a shift of every intercept: compare them centred


def test_logreg_matches_sklearn_pipeline_coefficients() -> None:
    fit, ev = _clusters(300), _clusters(90, seed=1)
    C = 0.1
    out = fit_solver(_spec("logreg", C=(C,), max_iter=5000, tol=1e-10, standardize=True), _inputs(fit, ev))
    w_ref, b_ref, pipe = _sklearn_logreg_raw(*fit, C)
    w, b = out.state["weight"].numpy(), out.state["bias"].numpy()
    assert out.state["weight"].dtype == torch.float64
    scale = np.abs(w_ref).max()
    assert np.abs(w - w_ref).max() < 1e-6 * scale  # raw coordinates, relative to the largest coefficient
    assert np.abs((b - b.mean()) - b_ref).max() < 1e-6 * max(1.0, np.abs(b_ref).max())
    assert out.eval.top1 == pytest.approx(pipe.score(*ev))


def test_logreg_without_the_option_is_unchanged_by_it() -> None:
    """logreg already fits on the fit rows' z-scores, so the option cannot move its optimum."""
    fit, ev = _clusters(300), _clusters(90, seed=1)
    kw = {"C": (0.1,), "max_iter": 5000, "tol": 1e-10}
    on = fit_solver(_spec("logreg", **kw, standardize=True), _inputs(fit, ev))
    off = fit_solver(_spec("logreg", **kw), _inputs(fit, ev))
    torch.testing.assert_close(on.state["weight"], off.state["weight"], rtol=1e-6, atol=1e-9)


def test_ridge_matches_the_closed_form_on_sklearn_standardised_features() -> None:
    from sklearn.preprocessing import StandardScaler

    fit, ev = _clusters(200), _clusters(60, seed=2)
    lam = 3.0
    out = fit_solver(_spec("ridge", grid=(lam,), standardize=True), _inputs(fit, ev))
    z = StandardScaler().fit(fit[0])
    zf = z.transform(fit[0])
    s2 = zf.std(0) + STD_EPS  # the ridge's own big_vision standardiser then runs on already-standard features
    aug = np.c_[(zf - zf.mean(0)) / s2, np.full(len(zf), BIAS_VALUE)]
    Y = 2 * np.eye(3)[fit[1]] - 1
    W = np.linalg.solve(aug.T @ aug + lam * np.eye(aug.shape[1]), aug.T @ Y)
    ze = z.transform(ev[0])
    ref = np.c_[(ze - zf.mean(0)) / s2, np.full(len(ze), BIAS_VALUE)] @ W
    got = ev[0] @ out.state["weight"].numpy().T + out.state["bias"].numpy()
    assert np.abs(got - ref).max() < 1e-8 * np.abs(ref).max()


def test_scaler_is_fit_on_the_fit_rows_only() -> None:
    """Holdout and eval shifted by +1000: a scaler that saw them would move every coefficient."""
    fit, hold, ev = _clusters(300), _clusters(60, seed=3, shift=1000.0), _clusters(90, seed=4, shift=1000.0)
    out = fit_solver(_spec("logreg", C=(0.1,), max_iter=5000, tol=1e-10, standardize=True),
                     _inputs(fit, ev, hold=hold, refit_with_holdout=False))
    w_ref, _, pipe = _sklearn_logreg_raw(*fit, 0.1)  # the scaler and model of the fit rows alone
    assert np.abs(out.state["weight"].numpy() - w_ref).max() < 1e-6 * np.abs(w_ref).max()
    assert out.eval.top1 == pytest.approx(pipe.score(*ev))
    assert out.holdout is not None and out.holdout.top1 == pytest.approx(pipe.score(*hold))
    ncm = fit_solver(_spec("ncm", standardize=True), _inputs(fit, ev, hold=hold))
    np.testing.assert_allclose(ncm.state["input_mean"].numpy(), fit[0].mean(0), rtol=1e-6)
    np.testing.assert_allclose(ncm.state["input_scale"].numpy(), fit[0].std(0), rtol=1e-6)  # ddof=0


def test_zero_variance_columns_keep_scale_one_as_sklearn() -> None:
    from sklearn.preprocessing import StandardScaler

    x, _ = _clusters(50)
    x[:, 2] = 7.25  # constant
    x[:, 5] = 0.0
    s = Standardizer.fit(torch.from_numpy(x))
    ref = StandardScaler().fit(x)
    np.testing.assert_allclose(s.scale.numpy(), ref.scale_, rtol=1e-12)
    np.testing.assert_allclose(s.mean.numpy(), ref.mean_, rtol=1e-12)
    assert s.constant == 2 and s.scale[2] == 1 and s.scale[5] == 1
    np.testing.assert_allclose(s(torch.from_numpy(x)).numpy(), ref.transform(x), atol=1e-12)
    out = fit_solver(_spec("logreg", C=(0.1,), max_iter=5000, tol=1e-10, standardize=True),
                     _inputs((x, np.arange(50) % 3), _clusters(30, seed=5)))
    assert torch.isfinite(out.state["weight"]).all() and out.details["standardize"]["constant_features"] == 2


def _specs(heads: list[str], standardize: bool = False) -> list[SolverSpec]:
    return expand_solver_specs(heads, layers=[0], tokens=["gap"], has_cls=False, shots=[], tries=1, k=[5, 20],
                               temperature=[0.07], c_preset="dinov2", settings=SETTINGS, standardize=standardize)


def test_option_changes_the_id_and_is_named_and_recorded() -> None:
    off, on = _specs(["logreg(C=[1.0])"]), _specs(["logreg(C=[1.0])"], standardize=True)
    assert off[0].id != on[0].id
    assert off[0].head_name == "logreg(C=[1.0])" and on[0].head_name == "logreg(C=[1.0],standardize=True)"
    assert off[0].hyperparameters()["head_options"]["standardize"] is False
    assert on[0].hyperparameters()["head_options"]["standardize"] is True
    assert _specs(["logreg(C=[1.0],standardize=True)"])[0].id == on[0].id  # the head option and the flag agree
    assert _specs(["logreg(C=[1.0],standardize=False)"], standardize=True)[0].id == off[0].id  # parentheses win
    # with the option off the id is the one written before the option existed: finished rows stay finished
    doc = {**off[0].hyperparameters(), "settings": SETTINGS.to_json()}
    del doc["head_options"]["standardize"]
    old = hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
    assert off[0].id == old
    assert {s.kind for s in _specs(["knn", "ridge(grid='bigvision')", "ncm"], standardize=True)} == {
        "knn", "ridge", "ncm"}
    with pytest.raises(ConfigError, match="standardize takes True or False"):
        _specs(["ncm(standardize=1)"])


def test_rows_record_the_option_and_saved_heads_read_raw_features(tmp_path: Path) -> None:
    store = class_store(tmp_path / "s.zarr", registers=1)
    args = ["probe", "--store", str(store), "--head", "knn,ridge,logreg(C=[0.1,1.0]),ncm", "--k", "5,20",
            "--tokens", "gap", "--holdout", "0.2", "--device", "cpu", "--no-progress"]
    r = CliRunner().invoke(app, [*args, "--standardize", "--out", str(tmp_path / "on")])
    assert r.exit_code == 0, r.output
    rows = _rows(tmp_path / "on")
    assert len(rows) == 4 and all(row["config"]["head_options"]["standardize"] is True for row in rows)
    assert all("standardize=True" in row["name"] for row in rows)
    assert json.loads((tmp_path / "on" / "config.json").read_text())["config"]["standardize"] is True
    with open_store(store) as st:  # a saved head, scaler folded in or carried, reproduces its eval accuracy
        x = torch.from_numpy(pool_rows(st, "val", 0, np.arange(st.split("val").num_samples)).features("gap"))
        y = torch.from_numpy(st.read_labels("val"))
    for row in rows:
        if row["head_file"] is not None:
            logits, _ = load_solver_head(tmp_path / "on" / row["head_file"])
            acc = float((logits(x).argmax(1) == y).double().mean())
            assert acc == pytest.approx(row["metrics"]["eval"]["top1"], abs=1 / len(y) + 1e-9), row["name"]
    off = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "off")])
    assert off.exit_code == 0, off.output
    rows_off = _rows(tmp_path / "off")
    assert all(row["config"]["head_options"]["standardize"] is False for row in rows_off)
    assert not {row["id"] for row in rows} & {row["id"] for row in rows_off}


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
