"""dense-knn: every (metric, k) of one search per metric equals a brute-force numpy vote exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dense_synth import IGNORE, synth_dense

from epcache.errors import ConfigError
from epcache.probe.dense.inputs import labelled_patches
from epcache.probe.dense.knn import dense_knn_predict, run_dense_knn


def _brute(mem: np.ndarray, lab: np.ndarray, q: np.ndarray, k: int, metric: str, classes: int) -> np.ndarray:
    if metric == "cosine":
        mem = mem / np.linalg.norm(mem, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        dist = -(q @ mem.T)
    else:
        dist = ((q[:, None, :] - mem[None, :, :]) ** 2).sum(-1)
    nn = np.argsort(dist, axis=1, kind="stable")[:, :k]
    votes = np.zeros((q.shape[0], classes))
    for i in range(q.shape[0]):
        np.add.at(votes[i], lab[nn[i]], 1)
    return votes.argmax(1)  # ties to the lowest class


@pytest.mark.parametrize("normalize", [False, True])
def test_all_pairs_equal_brute_force(normalize: bool) -> None:
    data = synth_dense(noise=1.5, dtype=np.float64, seed=3)
    mem, lab = labelled_patches(data.train_feats, data.train_patch_labels, IGNORE)
    q = data.eval_feats.reshape(-1, data.eval_feats.shape[-1])
    got = dense_knn_predict(torch.from_numpy(mem), torch.from_numpy(lab), torch.from_numpy(q), ks=(1, 3, 10, 30),
                            metrics=("cosine", "l2"), num_classes=4, normalize=normalize)
    assert sorted(got) == [(m, k) for m in ("cosine", "l2") for k in (1, 3, 10, 30)]
    if normalize:
        mem = mem / np.linalg.norm(mem, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    for (metric, k), pred in got.items():
        np.testing.assert_array_equal(pred.numpy(), _brute(mem, lab, q, k, metric, 4), err_msg=f"{metric} k={k}")


def test_ignore_patches_stay_out_of_the_memory() -> None:
    data = synth_dense(n_train=6, n_eval=2, noise=0.1)
    plab = data.train_patch_labels.copy()
    mem, lab = labelled_patches(data.train_feats, plab, IGNORE)
    assert mem.shape[0] == int((plab != IGNORE).sum()) and IGNORE not in lab


def test_run_selects_on_the_holdout_and_reads_the_class() -> None:
    data = synth_dense(noise=0.5)
    res = run_dense_knn(data)
    assert res.kind == "dense-knn" and len(res.holdout) == 8
    assert (res.chosen["metric"], res.chosen["k"]) in [(p["metric"], p["k"]) for p, _ in res.holdout]
    assert res.miou > 0.8 and res.predictions is not None and res.predictions.shape == (4, 16, 16)


def test_bad_requests() -> None:
    x, y = torch.zeros(5, 3), torch.zeros(5, dtype=torch.long)
    with pytest.raises(ConfigError, match="larger than the bank"):
        dense_knn_predict(x, y, x, ks=(30,), metrics=("cosine",), num_classes=2)
    with pytest.raises(ConfigError, match="metric"):
        dense_knn_predict(x, y, x, ks=(1,), metrics=("manhattan",), num_classes=2)
    with pytest.raises(ConfigError, match=">= 1"):
        dense_knn_predict(x, y, x, ks=(0,), metrics=("l2",), num_classes=2)
