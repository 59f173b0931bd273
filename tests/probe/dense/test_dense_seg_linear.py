"""seg-linear: reads a linearly readable class, and a G-head fused run equals G one-head runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dense_synth import IGNORE, synth_dense

from epcache.errors import ConfigError
from epcache.probe.dense.seg_linear import run_seg_linear, train_seg_linear


def test_fused_grid_equals_separate_runs_at_float64() -> None:
    data = synth_dense(n_train=12, noise=1.0, dtype=np.float64)
    feats = torch.from_numpy(data.train_feats)
    labels = torch.from_numpy(data.train_labels.astype(np.int64))
    lrs, wds = [1e-2, 1e-1, 1e-2], [0.0, 1e-2, 0.5]
    kw = {"num_classes": 4, "ignore_index": IGNORE, "epochs": 3, "batch_size": 5, "seed": 7}
    fused = train_seg_linear(feats, labels, lrs=lrs, wds=wds, **kw)
    for g, (lr, wd) in enumerate(zip(lrs, wds, strict=True)):
        one = train_seg_linear(feats, labels, lrs=[lr], wds=[wd], **kw)
        for name in ("gamma", "beta", "weight", "bias"):
            np.testing.assert_allclose(getattr(fused, name)[g].numpy(), getattr(one, name)[0].numpy(), rtol=1e-10,
                                       atol=1e-12, err_msg=f"head {g} {name}")
        np.testing.assert_allclose(fused.running_mean.numpy(), one.running_mean.numpy())
    assert not torch.equal(fused.weight[0], fused.weight[1])  # the heads did train apart


def test_reads_a_linear_class_above_0_9_miou_and_is_deterministic() -> None:
    data = synth_dense(n_train=40, noise=0.5, flip=0.0, block=2)
    res = run_seg_linear(data, lrs=(1e-2, 1e-1), wds=(1e-4,), epochs=8, batch_size=8)
    assert res.miou > 0.9, res.holdout
    assert len(res.holdout) == 2 and res.chosen["lr"] in (1e-2, 1e-1)
    again = run_seg_linear(data, lrs=(1e-2, 1e-1), wds=(1e-4,), epochs=8, batch_size=8)
    assert again.miou == res.miou and again.holdout == res.holdout


def test_bad_grids_are_user_errors() -> None:
    x, y = torch.zeros(2, 2, 2, 3), torch.zeros(2, 4, 4, dtype=torch.long)
    with pytest.raises(ConfigError, match="one wd per lr"):
        train_seg_linear(x, y, lrs=[0.1], wds=[0.1, 0.2], num_classes=2, ignore_index=IGNORE)
    with pytest.raises(ConfigError, match="lr must be > 0"):
        train_seg_linear(x, y, lrs=[0.0], wds=[0.1], num_classes=2, ignore_index=IGNORE)
