"""Suite-wide settings.

torch's default intra-op pool (one thread per core) makes every small op cost milliseconds on
the 2-core CI machine when another process holds a core; the tests use tiny tensors, so one
thread is both faster and steadier. Nothing here changes a result: every numeric test compares
against references at fixed dtypes.
"""

from __future__ import annotations

import torch

torch.set_num_threads(1)
