"""Dense heads: time and peak memory of each head beside the plain way to compute the same thing.

Command (from the repository root)::

    python bench/dense.py            # 200 train + 50 eval images, 16x16 patches, D=192, 21 classes
    python bench/dense.py --quick    # 40 + 10 images: a smoke run, not the reported figures

Each measurement runs in a forked child process of a parent that never ran torch. The child's peak
resident set is sampled every 2 ms, minus its size at the start, and that difference is its peak
memory (numpy and torch allocations alike). Times are wall-clock on the same child. Every figure is a
ratio of two measurements taken side by side in one run; the absolute seconds move with the load of
the shared machine. One torch thread, as the other benches.

Pairs (ours vs baseline, same inputs):

1. dense-knn, metric {cosine, l2} x k {1, 3, 10, 30}. Ours: ``dense_knn_predict`` (one tiled search
   per metric at k = 30, every k voted from it). Baseline: numpy brute force, one search per
   (metric, k) pair, 1,024 queries at a time (argpartition + sort). Checks: identical predictions.
2. dense-logreg, the default 13-value C grid on the standardised labelled patches. Ours: the warm-
   started C path. Baseline: scikit-learn ``LogisticRegression(lbfgs)`` fitted once per C, the same
   tol and max_iter. Reports the largest holdout-accuracy difference over the grid.
3. hummingbird, bank = every labelled train patch, k = 30, T = 0.02. Ours: ``hummingbird_scores``.
   Baseline: numpy brute force in 1,024-query chunks. Checks: the same argmax.
4. seg-linear, the default 3 lr x 2 wd grid, 10 epochs. Ours: the six heads fused in one pass.
   Baseline: the six trained one after another (``train_seg_linear`` with one head each), the same
   arithmetic. Checks: the same weights.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

THREADS = int(os.environ.setdefault("OMP_NUM_THREADS", "1"))  # before numpy and torch are imported

# imported in the parent, so no child's timing pays an import; the parent runs no torch op before forking
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch._dynamo  # noqa: E402  (torch.optim's first step imports it: seconds, not the head's cost)
from sklearn.linear_model import LogisticRegression  # noqa: E402

from epcache.probe.dense import DenseData  # noqa: E402
from epcache.probe.dense.hummingbird import hummingbird_scores  # noqa: E402
from epcache.probe.dense.inputs import holdout_split, labelled_patches  # noqa: E402
from epcache.probe.dense.knn import dense_knn_predict  # noqa: E402
from epcache.probe.dense.logreg import DENSE_LOGREG_CS  # noqa: E402
from epcache.probe.dense.seg_linear import SEG_LINEAR_LRS, SEG_LINEAR_WDS, train_seg_linear  # noqa: E402
from epcache.probe.solvers import logreg_path  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")
CHUNK = 1024
KS, METRICS = (1, 3, 10, 30), ("cosine", "l2")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def _measure(fn: Callable[[], Any]) -> tuple[Any, float, int]:
    start = _rss()
    peak = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.002):
            peak[0] = max(peak[0], _rss())

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    out = fn()
    secs = time.perf_counter() - t0
    done.set()
    t.join()
    return out, secs, max(peak[0], _rss()) - start


def _child(fn: Callable[[], Any], conn: Any) -> None:
    conn.send(_measure(fn))
    conn.close()


INLINE = False  # --inline: measure in this process (the test's mode: no fork after torch has run)


def measured(fn: Callable[[], Any]) -> tuple[Any, float, int]:
    """``fn()``'s result, seconds and peak RSS growth, run in a forked child (or here with ``--inline``)."""
    if INLINE:
        return _measure(fn)
    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(fn, send))
    proc.start()
    out = recv.recv()
    proc.join()
    return out


def synth(n_train: int, n_eval: int, *, grid: int, patch: int, dim: int, classes: int, seed: int = 0) -> DenseData:
    """Class prototypes plus noise per patch; 2x2-patch class blocks; 5% flipped and 5% ignore pixels."""
    rng = np.random.default_rng(seed)
    protos = rng.normal(size=(classes, dim)).astype(np.float32)

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        cls = rng.integers(0, classes, size=(n, grid // 2, grid // 2)).repeat(2, 1).repeat(2, 2)
        feats = (protos[cls] + 2.0 * rng.normal(size=(n, grid, grid, dim))).astype(np.float32)
        px = cls.repeat(patch, 1).repeat(patch, 2).astype(np.uint8)
        flip = rng.random(px.shape) < 0.05
        px[flip] = rng.integers(0, classes, size=int(flip.sum()))
        px[rng.random(px.shape) < 0.05] = 255
        return feats, px

    tf, tl = split(n_train)
    ef, el = split(n_eval)
    return DenseData(tf, tl, ef, el, num_classes=classes, ignore_index=255)


def knn_ours(mem: np.ndarray, lab: np.ndarray, q: np.ndarray, classes: int) -> dict[tuple[str, int], np.ndarray]:
    out = dense_knn_predict(torch.from_numpy(mem), torch.from_numpy(lab), torch.from_numpy(q), ks=KS,
                            metrics=METRICS, num_classes=classes)
    return {key: v.numpy() for key, v in out.items()}


def _topk_numpy(mem: np.ndarray, q: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (similarity, index) per query, descending, by brute force in query chunks."""
    if metric == "cosine":
        mem = mem / np.linalg.norm(mem, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    sq = (mem * mem).sum(1)
    sims, idxs = [], []
    for s in range(0, q.shape[0], CHUNK):
        qc = q[s : s + CHUNK]
        sim = qc @ mem.T
        if metric == "l2":
            sim = 2 * sim - sq - (qc * qc).sum(1, keepdims=True)
        part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        ps = np.take_along_axis(sim, part, 1)
        order = np.argsort(-ps, axis=1, kind="stable")
        sims.append(np.take_along_axis(ps, order, 1))
        idxs.append(np.take_along_axis(part, order, 1))
    return np.concatenate(sims), np.concatenate(idxs)


def knn_numpy(mem: np.ndarray, lab: np.ndarray, q: np.ndarray, classes: int) -> dict[tuple[str, int], np.ndarray]:
    out = {}
    for metric in METRICS:
        for k in KS:
            _, idx = _topk_numpy(mem, q, k, metric)
            votes = np.zeros((q.shape[0], classes))
            np.add.at(votes, (np.arange(q.shape[0])[:, None].repeat(k, 1), lab[idx]), 1)
            out[(metric, k)] = votes.argmax(1)
    return out


def hb_ours(mem: np.ndarray, lab: np.ndarray, q: np.ndarray, classes: int) -> np.ndarray:
    return hummingbird_scores(torch.from_numpy(mem), torch.from_numpy(lab), torch.from_numpy(q),
                              num_classes=classes).numpy()


def hb_numpy(mem: np.ndarray, lab: np.ndarray, q: np.ndarray, classes: int) -> np.ndarray:
    sims, idx = _topk_numpy(mem, q, 30, "cosine")
    w = np.exp((sims - sims[:, :1]) / 0.02)
    w /= w.sum(1, keepdims=True)
    out = np.zeros((q.shape[0], classes))
    np.add.at(out, (np.arange(q.shape[0])[:, None].repeat(30, 1), lab[idx]), w)
    return out


def logreg_ours(z: np.ndarray, y: np.ndarray, zh: np.ndarray, yh: np.ndarray, classes: int) -> list[float]:
    _, _, accs = logreg_path(torch.from_numpy(z), torch.from_numpy(y), torch.from_numpy(zh), torch.from_numpy(yh),
                             DENSE_LOGREG_CS, num_classes=classes, tol=1e-4, max_iter=500)
    return accs


def logreg_sklearn(z: np.ndarray, y: np.ndarray, zh: np.ndarray, yh: np.ndarray, classes: int) -> list[float]:
    warnings.filterwarnings("ignore")  # ConvergenceWarning at max_iter on the weakest ridges, as ours may stop there
    return [float(LogisticRegression(C=c, tol=1e-4, max_iter=500).fit(z, y).score(zh, yh)) for c in DENSE_LOGREG_CS]


def seg_fused(data: Any, epochs: int, separate: bool) -> np.ndarray:
    feats, labels = torch.from_numpy(data.train_feats), torch.from_numpy(data.train_labels.astype(np.int64))
    pairs = [(lr, wd) for lr in SEG_LINEAR_LRS for wd in SEG_LINEAR_WDS]
    kw = {"num_classes": data.num_classes, "ignore_index": data.ignore_index, "epochs": epochs, "batch_size": 16}
    if not separate:
        heads = train_seg_linear(feats, labels, lrs=[p[0] for p in pairs], wds=[p[1] for p in pairs], **kw)
        return heads.weight.numpy()
    return np.stack([train_seg_linear(feats, labels, lrs=[lr], wds=[wd], **kw).weight[0].numpy() for lr, wd in pairs])


def row(name: str, ours: tuple[Any, float, int], base: tuple[Any, float, int], check: str) -> str:
    mb = 1 << 20
    return (f"{name:<13} {ours[1]:8.2f}s {base[1]:8.2f}s {base[1] / ours[1]:7.1f}x   "
            f"{ours[2] / mb:8.0f} {base[2] / mb:8.0f} {base[2] / max(ours[2], 1):7.1f}x   {check}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--images", type=int, default=None, help="train images (default 200, --quick 40)")
    ap.add_argument("--grid", type=int, default=16)
    ap.add_argument("--dim", type=int, default=192)
    ap.add_argument("--classes", type=int, default=21)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--only", default="knn,logreg,hummingbird,seg-linear")
    ap.add_argument("--inline", action="store_true", help="measure in this process (memory figures then overlap)")
    a = ap.parse_args(argv)
    global INLINE
    INLINE = a.inline
    n = a.images or (40 if a.quick else 200)
    data = synth(n, max(2, n // 4), grid=a.grid, patch=8, dim=a.dim, classes=a.classes)
    C = data.num_classes
    mem, lab = labelled_patches(data.train_feats, data.train_patch_labels, 255)
    q = data.eval_feats.reshape(-1, a.dim)
    print(f"{n} train + {data.eval_feats.shape[0]} eval images, {a.grid}x{a.grid} patches, D={a.dim}, {C} classes; "
          f"memory {mem.shape[0]} patches, {q.shape[0]} queries; OMP threads {THREADS}")
    print(f"{'head':<13} {'ours':>9} {'baseline':>9} {'speed':>8}   {'ours MB':>8} {'base MB':>8} {'memory':>8}   "
          "check")
    only = a.only.split(",")
    if "knn" in only:
        o, b = measured(lambda: knn_ours(mem, lab, q, C)), measured(lambda: knn_numpy(mem, lab, q, C))
        same = all(np.array_equal(o[0][key], b[0][key]) for key in o[0])
        print(row("dense-knn", o, b, f"8 (metric, k) pairs, predictions {'identical' if same else 'DIFFER'}"))
    if "logreg" in only:
        fit, hold = holdout_split(n, None, fraction=0.1, seed=0)
        x, y = labelled_patches(data.train_feats[fit], data.train_patch_labels[fit], 255)
        xh, yh = labelled_patches(data.train_feats[hold], data.train_patch_labels[hold], 255)
        mu, sd = x.mean(0), x.std(0)
        z, zh = ((x - mu) / sd).astype(np.float32), ((xh - mu) / sd).astype(np.float32)
        o, b = measured(lambda: logreg_ours(z, y, zh, yh, C)), measured(lambda: logreg_sklearn(z, y, zh, yh, C))
        gap = max(abs(u - v) for u, v in zip(o[0], b[0], strict=True))
        print(row("dense-logreg", o, b, f"13 C values, max holdout-accuracy gap {100 * gap:.2f} points"))
    if "hummingbird" in only:
        o, b = measured(lambda: hb_ours(mem, lab, q, C)), measured(lambda: hb_numpy(mem, lab, q, C))
        agree = float(np.mean(o[0].argmax(1) == b[0].argmax(1)))
        print(row("hummingbird", o, b, f"k=30, T=0.02, bank {mem.shape[0]}; argmax agreement {100 * agree:.2f}%"))
    if "seg-linear" in only:
        o, b = measured(lambda: seg_fused(data, a.epochs, False)), measured(lambda: seg_fused(data, a.epochs, True))
        close = np.allclose(o[0], b[0], rtol=1e-4, atol=1e-5)
        print(row("seg-linear", o, b, f"6 heads fused vs one by one, weights {'equal' if close else 'DIFFER'}"))


if __name__ == "__main__":
    main()
