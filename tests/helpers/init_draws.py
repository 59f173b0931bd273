"""Comparing seeded initial weights with the reference's, across CPUs.

Seeded draws go through ``trunc_normal_``, whose ``erfinv`` kernel differs in the last bit between
CPU instruction sets (AVX2 / AVX-512 / scalar); the vectors were drawn on another CPU. A draw must
match to a few float32 ulps (a wrong init, order or RNG consumption is off by far more); callers
check the RNG stream after construction exactly.
"""

from __future__ import annotations

import numpy as np
import torch

INIT_MAX_ULP = 4


def assert_same_draw(ours: torch.Tensor, ref: np.ndarray, key: str) -> None:
    """``ours`` equals the reference draw ``ref`` (a float32 value stored in any float dtype) to 4 ulps."""
    a = ours.detach().to(torch.float32).numpy()
    r = np.asarray(ref).astype(np.float32)
    assert a.shape == r.shape, key
    assert np.array_equal(r.astype(ref.dtype), ref), f"{key}: reference draw is not a float32 value"
    np.testing.assert_array_max_ulp(a, r, maxulp=INIT_MAX_ULP, dtype=np.float32)
