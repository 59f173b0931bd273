"""The logistic C path says its progress, one line per C, once it is slow, and nothing with progress off."""

from __future__ import annotations

from pathlib import Path

import pytest
from solver_helpers import class_store

import epcache._progress
from epcache.probe import ProbeConfig, probe_store

HEAD = "logreg(C=[0.01,0.1,1.0])"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return class_store(tmp_path_factory.mktemp("lr") / "s.zarr", n_train=80, n_val=40)


def _stderr(store: Path, capsys: pytest.CaptureFixture[str], *, progress: bool, select: str = "holdout") -> str:
    capsys.readouterr()
    probe_store(ProbeConfig(store=str(store), head=(HEAD,), device="cpu", select=select), progress=progress)
    return capsys.readouterr().err


def test_slow_c_path_says_each_c_and_the_total(store: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    assert "L-BFGS iterations" not in _stderr(store, capsys, progress=True)  # a quick path stays quiet
    monkeypatch.setattr(epcache._progress, "SLOW_AFTER_S", 0.0)  # every path counts as slow
    err = _stderr(store, capsys, progress=True)
    lines = [line for line in err.splitlines() if "L-BFGS iterations" in line]
    assert [line.split(": C ")[1].split(":")[0] for line in lines] == ["1/3 = 0.01", "2/3 = 0.1", "3/3 = 1"]
    assert all(": holdout " in line and line.endswith(" s)") for line in lines)
    assert sum("C path (3 values) and refit at C = " in line for line in err.splitlines()) == 1
    off = _stderr(store, capsys, progress=False)
    assert "L-BFGS" not in off and "C path" not in off


def test_cross_validated_c_path_says_each_fold_and_c(store: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(epcache._progress, "SLOW_AFTER_S", 0.0)
    err = _stderr(store, capsys, progress=True, select="cv2")
    lines = [line for line in err.splitlines() if "L-BFGS iterations" in line]
    assert [line.split(": fold ")[1].split(":")[0] for line in lines] == [
        f"{f}/2, C {i}/3 = {c}" for f in (1, 2) for i, c in ((1, "0.01"), (2, "0.1"), (3, "1"))]
    assert sum("C path (3 values) on 2 folds in " in line for line in err.splitlines()) == 1
    assert sum(": refit at C = " in line for line in err.splitlines()) == 1
