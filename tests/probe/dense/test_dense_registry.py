"""The registry and ``run_dense_head``: every kind runs from its defaults, beats the majority baseline,
and a bad kind, parameter or array shape is a one-line user error."""

from __future__ import annotations

import numpy as np
import pytest
from dense_synth import synth_dense

from epcache.errors import ConfigError, EpcacheError, ShapeMismatchError
from epcache.probe.dense import DENSE_HEADS, DenseData, run_dense_head
from epcache.probe.dense.inputs import holdout_split

FAST = {"seg-linear": {"epochs": 4, "lrs": (1e-1,), "wds": (1e-4,)}, "dense-logreg": {"Cs": (0.1, 1.0)}}


@pytest.mark.parametrize("kind", sorted(DENSE_HEADS))
def test_every_kind_beats_the_majority_class(kind: str) -> None:
    data = synth_dense(n_train=30, noise=0.8)
    res = run_dense_head(kind, data, FAST.get(kind))
    assert res.kind == kind and res.baseline is not None
    assert res.miou > res.baseline.miou + 0.3
    assert 0 <= res.pixel_acc <= 1 and res.per_class_iou.shape == (4,)
    assert set(DENSE_HEADS[kind].defaults) >= set(FAST.get(kind, {}))


def test_unknown_kind_and_parameter() -> None:
    data = synth_dense(n_train=4, n_eval=2)
    with pytest.raises(ConfigError, match="unknown dense head"):
        run_dense_head("dense-svm", data)
    with pytest.raises(ConfigError, match="unknown parameter.*lr$"):
        run_dense_head("dense-knn", data, {"lr": 1.0})


def test_data_checks() -> None:
    d = synth_dense(n_train=4, n_eval=2)
    with pytest.raises(ShapeMismatchError, match="token grid"):
        DenseData(d.train_feats, d.train_labels[:, :15], d.eval_feats, d.eval_labels, num_classes=4)
    with pytest.raises(ConfigError, match="is a class index"):
        DenseData(d.train_feats, d.train_labels, d.eval_feats, d.eval_labels, num_classes=4, ignore_index=2)
    with pytest.raises(EpcacheError, match="differ"):
        DenseData(d.train_feats, d.train_labels, d.eval_feats[:, :2, :2], d.eval_labels[:, :8, :8], num_classes=4)


def test_holdout_is_by_image_and_seeded() -> None:
    groups = np.repeat(np.arange(10), 2)  # two views per image
    fit, hold = holdout_split(20, groups, fraction=0.1, seed=3)
    assert len(hold) == 2 and groups[hold[0]] == groups[hold[1]]
    assert not set(groups[fit]) & set(groups[hold])
    np.testing.assert_array_equal(hold, holdout_split(20, groups, fraction=0.1, seed=3)[1])
    with pytest.raises(ConfigError, match="at least 2"):
        holdout_split(3, np.zeros(3), fraction=0.1, seed=0)
