"""The ``--head`` vocabulary that sits below every probe package: the solver head kinds.

Trained heads are named by the registry (:func:`epcache.probe.heads.list_heads`); solver heads
are a fixed set. Heads (in their unknown-kind message), solvers (to split ``--head``) and the
listing all read this tuple, so it lives here, torch-free, and none of them imports another for it.
"""

from __future__ import annotations

__all__ = ["SOLVER_KINDS"]

SOLVER_KINDS: tuple[str, ...] = ("knn", "ridge", "logreg", "ncm")  # fitted once on pooled features, no epochs
