"""Does the plain default learn as well as a tuned textbook baseline? epcache's default vs scikit-learn.

Command (from the repository root)::

    python bench/probe_quality.py          # ~6 min on 2 idle CPU cores (longer while other jobs run)
    python bench/probe_quality.py --quick  # smaller stores, ~2 min

For two stores it builds itself, side by side in one run, on the SAME features and the SAME
train / holdout / eval rows:

- epcache: the plain default ``epcache probe --store S --head linear`` (recipe ``auto``; the
  library call with only ``head``, ``tokens`` and ``shots`` set), selected on its holdout;
- scikit-learn: ``StandardScaler`` + ``LogisticRegression(lbfgs)`` on the same pooled features
  (CLS, and GAP over the patch tokens), fitted on the same training rows for each C of
  ``logspace(-4, 4, 33)``, C chosen on the same holdout, scored once on eval.

Stores: (1) ``demo``: the demo's generated shapes, extracted by a random-init 4-block patch-8 ViT
at 64 px (its last block); (2) ``synthetic``: class-structured tokens (20 classes, D=64, class
means + noise + a few outlier channels) where a linear classifier is good but not perfect. Each at
full data and 5-shot. Target: the default within 1 point of the tuned logistic
regression in every case, and EP's default at least as good as linear's on the demo data.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import _stores
import numpy as np

from epcache.probe import ProbeConfig, probe_store
from epcache.probe.data.select import split_train
from epcache.store import open_store

C_GRID = np.logspace(-4, 4, 33)


def demo_store(root: Path, quick: bool) -> Path:
    return _stores.demo_store(root, quick)


def synthetic_store(root: Path, quick: bool) -> Path:
    return _stores.synthetic_store(root, quick, outlier_scale=20.0)


def features(store: Path, split: str, tokens: str) -> np.ndarray:
    st = open_store(store)
    x = st.read_tokens(split, st.meta.layers[-1])[:, 0].astype(np.float64)  # view 0: [N, T, D]
    p = st.meta.layout.num_prefix
    return x[:, 0] if tokens == "cls" else x[:, p:].mean(1)


def sklearn_best(store: Path, tokens: str, shots: int | None) -> tuple[float, float]:
    """Eval top-1 of LogisticRegression with C chosen on epcache's holdout, and the chosen C."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    st = open_store(store)
    ytr, yva = st.read_labels("train"), st.read_labels("val")
    sub = split_train(ytr, ytr >= 0, classes=st.split("train").classes, holdout=0.1, seed=0, shots=shots)
    xtr_all, xva = features(store, "train", tokens), features(store, "val", tokens)
    scaler = StandardScaler().fit(xtr_all[sub.train])
    xtr, xho, xev = scaler.transform(xtr_all[sub.train]), scaler.transform(xtr_all[sub.holdout]), scaler.transform(xva)
    best = (-1.0, 0.0, 0.0)
    for c in C_GRID:
        clf = LogisticRegression(C=c, max_iter=2000).fit(xtr, ytr[sub.train])
        hold = clf.score(xho, ytr[sub.holdout])
        if hold > best[0]:
            best = (hold, clf.score(xev, yva), c)
    return best[1], best[2]


def epcache_default(store: Path, head: str, tokens: str | None, shots: int | None) -> float:
    res = probe_store(ProbeConfig(store=str(store), head=(head,), tokens=() if tokens is None else (tokens,),
                                  shots=shots, device="cpu"), progress=False)
    assert res.best is not None
    return float(res.best["metrics"]["eval"]["top1"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        stores = {"demo": demo_store(root, args.quick), "synthetic": synthetic_store(root, args.quick)}
        print(f"{'store':<10} {'train':<7} {'tokens':<6} {'epcache default':>16} {'sklearn LR (C*)':>22} {'gap':>7}")
        worst = 0.0
        for name, store in stores.items():
            for shots in (None, 5):
                for tokens in ("cls", "gap"):
                    ours = epcache_default(store, "linear", tokens, shots)
                    theirs, c = sklearn_best(store, tokens, shots)
                    gap = 100 * (ours - theirs)
                    worst = min(worst, gap)
                    print(f"{name:<10} {'5-shot' if shots else 'full':<7} {tokens:<6} {100 * ours:>15.2f}% "
                          f"{100 * theirs:>12.2f}% ({c:7.2g}) {gap:>+6.2f}", flush=True)
        lin = epcache_default(stores["demo"], "linear", None, None)
        ep = epcache_default(stores["demo"], "ep", None, None)
        print(f"\ndemo, defaults: linear {100 * lin:.2f}% vs ep {100 * ep:.2f}% (ep - linear {100 * (ep - lin):+.2f})")
        print(f"worst gap of the default vs tuned logistic regression: {worst:+.2f} points "
              f"(target >= -1.00); {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
