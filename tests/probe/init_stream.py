"""Whether this torch draws seeded initial weights as the torch that generated the test vectors did.

The seeded-construction tests compare our heads' initial weights with the reference code's, drawn
under torch 2.14.1 (tests/data/README.md). Those are equalities of random streams: on a torch whose
uniform/erfinv/kaiming draws differ (torch 2.11 + CUDA 13 does, seen on the GPU machine) the reference
code itself would draw other weights, so the comparison says nothing about epcache there and is
skipped with that reason. Everything that does not depend on the stream (forward passes from stored
weights, training runs, parameter counts) is tested on every torch.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from epcache.probe.heads._base import trunc_normal_

# manual_seed(0) -> trunc_normal_(6, std .02) -> nn.Linear(3, 2).weight -> randn(3), under torch 2.14.1 (CPU)
GENERATOR_STREAM = [
    -0.00018766950233839452, 0.014660065993666649, -0.027003809809684753, -0.02233688160777092,
    -0.010063374415040016, 0.006853508297353983, -0.011439144611358643, 0.45777493715286255,
    -0.05123639851808548, 0.1527741253376007, -0.1744827926158905, -0.11348707973957062,
    -0.7830641269683838, 1.0621709823608398, -0.2613142132759094,
]


def init_stream() -> list[float]:
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)
        t = trunc_normal_(torch.empty(6), std=0.02)
        w = nn.Linear(3, 2).weight.detach().flatten()
        return [*t.tolist(), *w.tolist(), *torch.randn(3).tolist()]
    finally:
        torch.random.set_rng_state(state)


needs_generator_init = pytest.mark.skipif(
    init_stream() != GENERATOR_STREAM,
    reason=f"torch {torch.__version__} draws seeded weights differently from torch 2.14.1, which generated "
    "the vectors: the seeded-init equality cannot hold (stored-weight tests still run)",
)
