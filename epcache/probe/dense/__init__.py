"""Dense probes: per-patch heads and training-free correspondence, read from the same patch tokens.

A store already holds every patch token of every layer; with a dense label array beside them
(cache_layout.md) the segmentation heads fit per-patch labels and score mIoU, and correspondence
matches L2-normalised patch features between image pairs. This layer sits above the solvers (the
logistic C path is reused, not rewritten) and below the plan, which routes ``--head dense-*`` here.
"""

from epcache.probe.dense.inputs import DenseData as DenseData
from epcache.probe.dense.inputs import DenseResult as DenseResult
from epcache.probe.dense.metrics import SegMetrics as SegMetrics
from epcache.probe.dense.registry import DENSE_HEADS as DENSE_HEADS
from epcache.probe.dense.registry import DenseHeadSpec as DenseHeadSpec
from epcache.probe.dense.registry import run_dense_head as run_dense_head

__all__ = ["DENSE_HEADS", "DenseData", "DenseHeadSpec", "DenseResult", "SegMetrics", "run_dense_head"]
