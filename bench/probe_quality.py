"""Does the plain default learn as well as what a user would fit instead, at 20, 200 and 2,000 samples?

Command (from the repository root)::

    python bench/probe_quality.py                      # ~12 min when busy: 4-9 of them pretraining
    python bench/probe_quality.py --cache ~/.cache/epq  # keep the checkpoint: later runs skip pretraining
    python bench/probe_quality.py --quick              # coarser hyperparameter grids
    python bench/probe_quality.py --backbone random    # the random-init ViT instead

Backbone: no pretrained weights can be downloaded here and no installed package ships any, so the
default (``--backbone pretrained``) is a small timm ViT (bench/_pretrain.py: 4 blocks, width 96,
patch 8, 32 px) PRETRAINED HERE with supervision on line drawings the bench generates itself (the
demo's shapes, straight strokes, open arcs and capital letters no digit could pass for, 33 classes,
random size, place, rotation, stroke and blur; never a digit): 800 steps of 64 fresh drawings,
fixed seed, 250 s measured alone, 550 s on busy cores. The checkpoint is saved as safetensors
(under the run's temp dir, or ``--cache DIR``) and the digits are extracted through epcache's
real-weights path (``ExtractConfig(weights=...)``, as ``epcache extract --weights``). A
random-init ViT (``--backbone random``: 4 blocks, patch 4, 32 px) stays available: its features are
badly conditioned (the class signal sits in low-variance, correlated directions), which favours
least-squares ridge over every other fit and so measures a quirk of random features. A few CPU
minutes of pretraining only partly cure that: NCM rises well above the random ViT's, but ridge still
leads LogisticRegression by about 10 points at 200 samples (the README row has the last run).

The probe's data are REAL images: scikit-learn's 8x8 handwritten digits (10 classes), upsampled.
500 real digits (50 per class) are the fixed eval split; the 2,000-row training pool (200 per
class) is the other real digits topped up with lightly augmented copies of them (bench/_digits.py).

For each training size (20, 200, 2,000: stratified draws from the pool) and regime (full: every row
drawn; 5-shot: 5 per class drawn from those rows; not possible at 20 = 2 per class), a store holding
exactly those training rows and the eval split is written (a 5-shot store holds just its 50 rows: any
holdout the default carves out for its own selection comes out of them, as it would for a user), and
on the SAME features and rows:

- epcache: ``probe_store(ProbeConfig(store, head=("linear",), shots=...))``, everything else
  default (whatever protocol the library's default is today: only public calls are used);
- scikit-learn (bench/_quality.py): LogisticRegression on StandardScaler'd features, on raw
  features (C by stratified 5-fold CV over the training rows), RidgeClassifier (alpha the same way),
  nearest class mean, and the best of them, on the token kind the default head read (CLS).

Targets per cell: the default within 2 points of the best baseline at 200 and 2,000 (5 at 20), and
never below NCM. Each cell prints PASS or MISS. Two columns are printed for reading, not judged:
``vs_lr``, the default minus the logistic regression on standardised features (the same loss as the
linear head: how well the default trains), and ``ep.sgd``, the same default with ``--linear-fit sgd``
(the SGD cross-entropy heads alone, without the closed-form least-squares candidate that the default
``--head linear`` also fits under recipe auto; the last column names the fit the selection chose).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import _digits
import _pretrain
import _quality
import numpy as np

from epcache.probe import ProbeConfig, probe_store
from epcache.store import open_store

SIZES = (20, 200, 2000)
SHOTS = 5
EVAL_PER_CLASS = 50


def features(store: Path, split: str, tokens: str) -> tuple[np.ndarray, np.ndarray]:
    """The pooled features a linear head of ``tokens`` reads (last layer, view 0), with the labels."""
    st = open_store(store)
    x = st.read_tokens(split, st.meta.layers[-1])[:, 0].astype(np.float64)  # [N, T, D]
    p = st.meta.layout.num_prefix
    cls, gap = x[:, st.meta.layout.cls_index], x[:, p:].mean(1)
    pooled = {"cls": cls, "gap": gap, "cls+gap": np.concatenate([cls, gap], 1)}
    if tokens not in pooled:
        raise SystemExit(f"the default linear head read tokens={tokens!r}; this bench pools only {sorted(pooled)}")
    return pooled[tokens], st.read_labels(split)


def epcache_default(store: Path, shots: int | None, linear_fit: str = "auto") -> tuple[float, str, str]:
    """Eval top-1 of the plain default ``--head linear`` (the judged one), the token kind and the fit it chose."""
    res = probe_store(ProbeConfig(store=str(store), head=("linear",), shots=shots, device="cpu", linear_fit=linear_fit),
                      progress=False)
    assert res.best is not None
    fit = "lstsq" if res.best["config"]["kind"] == "ridge" else "sgd"
    return float(res.best["metrics"]["eval"]["top1"]), str(res.best["config"]["tokens"]), fit


def cells(root: Path, pool: Path, quick: bool) -> list[_quality.Cell]:
    """Every (size, regime) cell: a store of its training rows, the default on it, and the baselines."""
    grids = ({"c_grid": np.logspace(-4, 4, 9), "alpha_grid": np.logspace(-3, 5, 9), "max_iter": 300} if quick
             else {"c_grid": _quality.C_GRID, "alpha_grid": _quality.ALPHA_GRID, "max_iter": 1000})
    y_pool = open_store(pool).read_labels("train")
    out = []
    for size in SIZES:
        rows = _digits.stratified(y_pool, size // _digits.CLASSES, seed=size)
        for regime, shots in (("full", None), (f"{SHOTS}-shot", SHOTS)):
            if shots is not None:
                if size // _digits.CLASSES < shots:
                    continue
                rows_here = rows[_digits.stratified(y_pool[rows], shots, seed=size + 1)]
            else:
                rows_here = rows
            store = _digits.substore(pool, root / f"n{size}_{regime}.zarr", rows_here)
            ours, tokens, fit = epcache_default(store, shots)
            (x, y), (xe, ye) = features(store, "train", tokens), features(store, "val", tokens)
            ours_sgd, _, _ = epcache_default(store, shots, linear_fit="sgd")  # the trained heads alone
            cell = _quality.Cell(size, regime, ours, _quality.baselines(x, y, xe, ye, **grids), ours_sgd)
            print(_quality.row(cell), f" [{tokens}, {fit}]", flush=True)
            out.append(cell)
    return out


def backbone(kind: str, cache: Path, root: Path) -> tuple[str, Path | None, dict[str, int] | None]:
    """What the tokens come from: a description for the output, the checkpoint (None: random init), the model kwargs."""
    if kind == "random":
        return ("random-init ViT-Tiny (4 blocks, patch 4, 32 px); no pretrained weights", None, None)
    cfg = _pretrain.PretrainConfig()
    t0 = time.perf_counter()
    path, reused = _pretrain.checkpoint(cache, cfg, log=True)
    how = f"reused from {path}" if reused else f"trained in {time.perf_counter() - t0:.0f} s, saved to {path}"
    return (f"ViT ({_pretrain.describe()}) pretrained here: supervised, {len(_pretrain.CLASSES)} classes of generated "
            f"line drawings (shapes, strokes, arcs, capital letters; never a digit), {cfg.steps} steps x {cfg.batch}, "
            f"AdamW lr {cfg.lr}, seed {cfg.seed}; checkpoint {how}; extracted with ExtractConfig(weights=...)",
            path, dict(_pretrain.MODEL_KWARGS))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="coarser C / alpha grids and fewer solver iterations")
    ap.add_argument("--backbone", choices=("pretrained", "random"), default="pretrained",
                    help="pretrained: a ViT trained here on generated drawings (bench/_pretrain.py); random: init")
    ap.add_argument("--cache", type=Path, default=None,
                    help="directory keeping the pretrained checkpoint between runs (default: the run's temp dir)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        what, weights, kwargs = backbone(args.backbone, args.cache or root / "pretrain", root)
        print(f"backbone: {what}\ndata: real sklearn digits, 10 classes, upsampled to 32 px; "
              f"eval: {EVAL_PER_CLASS * _digits.CLASSES} held-out real digits", flush=True)
        pool = _digits.digits_pool(root, max(SIZES) // _digits.CLASSES, EVAL_PER_CLASS, weights, kwargs)
        print(f"store built in {time.perf_counter() - t0:.0f} s; eval top-1 in %; gap = epcache - best, "
              "vs_lr = epcache - lr_std, in points; ep.sgd = epcache --linear-fit sgd\n")
        print(_quality.HEADER + "  [tokens, fit chosen]")
        done = cells(root, pool, args.quick)
    misses = sum(c.verdict() != "PASS" for c in done)
    print(f"\n{len(done) - misses}/{len(done)} cells PASS; {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
