"""bench/dense.py at a tiny size: every pair runs, and each check the bench prints holds.

In-process (``--inline``): forking a test process after torch has run its thread pool is not safe.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import dense as bench


def test_tiny_run_prints_every_head_and_its_checks(capsys: pytest.CaptureFixture[str]) -> None:
    bench.main(["--inline", "--images", "8", "--grid", "4", "--dim", "8", "--classes", "3", "--epochs", "2"])
    out = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in out[2:]}
    assert sorted(rows) == ["dense-knn", "dense-logreg", "hummingbird", "seg-linear"]
    assert "predictions identical" in rows["dense-knn"]
    assert "argmax agreement 100.00%" in rows["hummingbird"]
    assert "weights equal" in rows["seg-linear"]
    assert "gap 0.00 points" in rows["dense-logreg"]
    for line in rows.values():
        assert line.count("x") >= 2  # a speed and a memory ratio


def test_numpy_baselines_equal_the_heads() -> None:
    data = bench.synth(6, 2, grid=4, patch=2, dim=8, classes=3)
    mem, lab = bench.labelled_patches(data.train_feats, data.train_patch_labels, 255)
    q = data.eval_feats.reshape(-1, 8)
    ours, base = bench.knn_ours(mem, lab, q, 3), bench.knn_numpy(mem, lab, q, 3)
    assert sorted(ours) == sorted(base)
    for key in ours:
        np.testing.assert_array_equal(ours[key], base[key])
    np.testing.assert_allclose(bench.hb_ours(mem, lab, q, 3), bench.hb_numpy(mem, lab, q, 3), atol=1e-5)


def test_dense_bytes_bench_measures_both_arrays() -> None:
    import dense_bytes

    (row,) = dense_bytes.main(["--quick"])
    assert row["mask_raw"] == 32 * 32  # uint8, one view
    assert row["tokens_raw"] == (1 + 2 * 2) * 192 * 2  # CLS + 2x2 patches of ViT-Tiny at 32 px, float16
    assert row["mask_disk"] > 0 and row["tokens_disk"] > 0 and row["images"] == 8
