"""Hummingbird: the memory bank's sampling and the soft label transfer against a brute-force numpy one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dense_synth import IGNORE, synth_dense

from epcache.errors import ConfigError
from epcache.probe.dense.hummingbird import hummingbird_memory, hummingbird_scores, run_hummingbird
from epcache.probe.dense.patch_labels import upsample_logits


def _reference(bank: np.ndarray, lab: np.ndarray, q: np.ndarray, k: int, T: float, classes: int) -> np.ndarray:
    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    qq = q / np.linalg.norm(q, axis=1, keepdims=True)
    sims = qq @ b.T
    nn = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    s = np.take_along_axis(sims, nn, 1) / T
    w = np.exp(s - s.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    out = np.zeros((q.shape[0], classes))
    for i in range(q.shape[0]):
        np.add.at(out[i], lab[nn[i]], w[i])
    return out


def test_bank_sampling_is_per_row_seeded_and_labelled_only() -> None:
    data = synth_dense(n_train=10)
    plab = data.train_patch_labels
    bank, lab = hummingbird_memory(data.train_feats, plab, memory_size=50, ignore_index=IGNORE, seed=4)
    again, _ = hummingbird_memory(data.train_feats, plab, memory_size=50, ignore_index=IGNORE, seed=4)
    other, _ = hummingbird_memory(data.train_feats, plab, memory_size=50, ignore_index=IGNORE, seed=5)
    assert bank.shape[0] == min(50, int((plab != IGNORE).sum())) and IGNORE not in lab
    np.testing.assert_array_equal(bank, again)
    assert not np.array_equal(bank, other)
    per_row = [sum(np.any(np.all(data.train_feats[i].reshape(-1, 16)[:, None] == bank[None], -1), 0))
               for i in range(10)]
    assert max(per_row) <= 5  # 50 // 10 rows
    full, _ = hummingbird_memory(data.train_feats, plab, memory_size=10**6, ignore_index=IGNORE)
    assert full.shape[0] == int((plab != IGNORE).sum())
    with pytest.raises(ConfigError, match="memory size"):
        hummingbird_memory(data.train_feats, plab, memory_size=0, ignore_index=IGNORE)


def test_label_transfer_equals_brute_force() -> None:
    data = synth_dense(noise=2.0, dtype=np.float64, seed=2)
    bank, lab = hummingbird_memory(data.train_feats, data.train_patch_labels, memory_size=400, ignore_index=IGNORE)
    q = data.eval_feats.reshape(-1, 16)
    got = hummingbird_scores(torch.from_numpy(bank), torch.from_numpy(lab), torch.from_numpy(q), num_classes=4)
    ref = _reference(bank, lab, q, 30, 0.02, 4)
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-12)
    res = run_hummingbird(data, memory_size=400, dtype=torch.float64)
    px = upsample_logits(torch.from_numpy(ref.reshape(10, 4, 4, 4)).permute(0, 3, 1, 2), (16, 16)).argmax(1)
    assert res.predictions is not None
    np.testing.assert_array_equal(res.predictions, px[:4].numpy())
    assert res.chosen["bank"] == 400 and res.miou > 0.5
