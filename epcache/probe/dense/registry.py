"""The four dense head kinds in one place: their parameters, defaults, grids, and ``run_dense_head``.

``DENSE_HEADS[kind].defaults`` holds every parameter a kind takes; the tuple-valued ones are the grids
its holdout selects from (docs/DENSE.md). The wiring (``epcache probe --head dense-*``) passes user
overrides as ``params``; an unknown parameter is a user error, not silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

import numpy as np

from epcache.errors import ConfigError
from epcache.probe.dense.hummingbird import HUMMINGBIRD_K, HUMMINGBIRD_MEMORY, HUMMINGBIRD_TEMPERATURE, run_hummingbird
from epcache.probe.dense.inputs import DenseData, DenseResult, score_patch_labels
from epcache.probe.dense.knn import DENSE_KNN_KS, DENSE_KNN_METRICS, run_dense_knn
from epcache.probe.dense.logreg import DENSE_LOGREG_CS, run_dense_logreg
from epcache.probe.dense.metrics import majority_class
from epcache.probe.dense.seg_linear import SEG_LINEAR_LRS, SEG_LINEAR_WDS, run_seg_linear
from epcache.probe.names import DENSE_KINDS

__all__ = ["DENSE_HEADS", "DenseHeadSpec", "majority_baseline", "run_dense_head"]


@dataclass(frozen=True)
class DenseHeadSpec:
    """A dense head kind: its defaults (tuples are selection grids) and the function that runs it."""

    kind: str
    defaults: Mapping[str, object]
    run: Callable[..., DenseResult]
    summary: str


def _logreg(data: DenseData, **params: object) -> DenseResult:
    result, _ = run_dense_logreg(data, **params)  # type: ignore[arg-type]
    return result


DENSE_HEADS: Mapping[str, DenseHeadSpec] = MappingProxyType({
    "dense-knn": DenseHeadSpec(
        "dense-knn",
        MappingProxyType({"ks": DENSE_KNN_KS, "metrics": DENSE_KNN_METRICS, "normalize": False, "holdout": 0.1,
                          "seed": 0}),
        run_dense_knn, "majority vote of the k nearest train patches; (metric, k) chosen on a holdout"),
    "dense-logreg": DenseHeadSpec(
        "dense-logreg",
        MappingProxyType({"Cs": DENSE_LOGREG_CS, "holdout": 0.1, "seed": 0, "max_iter": 1000, "tol": 1e-6}),
        _logreg, "standardised multinomial logistic regression per patch; C chosen on a holdout"),
    "seg-linear": DenseHeadSpec(
        "seg-linear",
        MappingProxyType({"lrs": SEG_LINEAR_LRS, "wds": SEG_LINEAR_WDS, "epochs": 10, "batch_size": 16,
                          "holdout": 0.1, "seed": 0, "refit": True}),
        run_seg_linear, "BatchNorm + 1x1 conv, bilinear logits, pixel CE; lr x wd fused, on a holdout"),
    "hummingbird": DenseHeadSpec(
        "hummingbird",
        MappingProxyType({"memory_size": HUMMINGBIRD_MEMORY, "k": HUMMINGBIRD_K,
                          "temperature": HUMMINGBIRD_TEMPERATURE, "seed": 0}),
        run_hummingbird, "soft label transfer from a bank of train patches (cosine, k=30, T=0.02)"),
})

assert tuple(DENSE_HEADS) == DENSE_KINDS, "epcache.probe.names.DENSE_KINDS must name the registry's kinds"


def majority_baseline(data: DenseData) -> DenseResult:
    """The most frequent training class predicted at every evaluation pixel: the floor to beat."""
    cls = majority_class(data.train_labels, num_classes=data.num_classes, ignore_index=data.ignore_index)
    pred = np.full(data.eval_feats.shape[:3], cls, dtype=np.int64)
    metrics, preview = score_patch_labels(pred, data.eval_labels, num_classes=data.num_classes,
                                          ignore_index=data.ignore_index)
    return DenseResult("majority", metrics, {"class": cls}, [], preview)


def run_dense_head(kind: str, data: DenseData, params: Mapping[str, object] | None = None) -> DenseResult:
    """Run one dense head with its defaults overridden by ``params``; the majority baseline rides along.

    Raises:
        ConfigError: an unknown kind or parameter.
    """
    spec = DENSE_HEADS.get(kind)
    if spec is None:
        raise ConfigError(f"unknown dense head {kind!r}; choose {', '.join(DENSE_HEADS)}")
    given = dict(params or {})
    unknown = sorted(set(given) - set(spec.defaults))
    if unknown:
        raise ConfigError(f"{kind} takes {', '.join(spec.defaults)}; unknown parameter(s) {', '.join(unknown)}")
    result = spec.run(data, **{**spec.defaults, **given})
    return replace(result, baseline=majority_baseline(data).metrics)
