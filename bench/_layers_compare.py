"""ALF vs last-layer linear vs concat-all linear on one store: the three sweeps, their selected rows, one table.

Each variant is one ``probe_store`` sweep at the package's defaults (recipe auto, its holdout and its
selection rule); what differs is only what the issue compares:

- ``last``:   ``--head linear --linear-fit sgd --tokens cls,gap`` on the last layer; the ranking picks
              the token kind and lr (so "last" is the better of CLS and GAP, chosen on the holdout);
- ``concat``: ``--head linear --linear-fit sgd --layers all --layer-mix concat --tokens cls+gap``
              (DINOv2's concatenation: every layer's CLS, then the last layer's GAP: (L + 1) D inputs);
- ``alf``:    ``--head alf --layers all`` (one learned query over every layer's CLS and GAP: 2L tokens).

The row a variant reports is ``ProbeResult.best``: the best row of the best seed group under the one
ranking every surface uses, so the eval split never chooses. ``--quick`` trims only the lr grid and the
length (same recipe otherwise), which the table's header says.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _digits
import _pretrain

from epcache.demo import DemoConfig, make_shapes_dataset
from epcache.demo._run import DEMO_MODEL  # the demo's backbone, named once there
from epcache.extract import ExtractConfig, extract_store
from epcache.probe import ProbeConfig, probe_store

VARIANTS = ("last", "concat", "alf")
QUICK = {"lr": (1e-3, 1e-2, 1e-1), "epochs": 8, "min_steps": 200}  # a few minutes for both stores on 2 cores


def variant_config(store: Path, variant: str, quick: bool) -> ProbeConfig:
    """The sweep of one variant: the package defaults plus exactly the flags the comparison names."""
    flags: dict[str, Any] = {
        "last": {"head": ("linear",), "linear_fit": "sgd", "tokens": ("cls", "gap")},
        "concat": {"head": ("linear",), "linear_fit": "sgd", "layers": ("all",), "layer_mix": ("concat",),
                   "tokens": ("cls+gap",)},
        "alf": {"head": ("alf",), "layers": ("all",)},
    }[variant]
    return ProbeConfig(store=str(store), device="cpu", **flags, **(QUICK if quick else {}))


@dataclass(frozen=True)
class Entry:
    """One variant's selected config on one store, as the table prints it."""

    name: str  # the row's readable name (head, layer, tokens, lr)
    top1: float  # eval top-1, fraction
    ci: tuple[float, float]  # its 95% interval (metrics.eval.top1_ci), fractions
    params: int
    seconds: float  # wall time of the whole sweep (every lr of the variant, fused, plus its holdout scoring)
    configs: int  # configs the sweep trained


def entry(best: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], seconds: float) -> Entry:
    """The table's view of a sweep's selected row."""
    ev = best["metrics"]["eval"]
    lo, hi = ev["top1_ci"]
    return Entry(str(best["name"]), float(ev["top1"]), (float(lo), float(hi)), int(best["params"]), seconds, len(rows))


def run_variant(store: Path, variant: str, quick: bool) -> Entry:
    """Sweep one variant on ``store`` (nothing written to disk) and keep its selected row."""
    t0 = time.perf_counter()
    res = probe_store(variant_config(store, variant, quick), progress=False)
    seconds = time.perf_counter() - t0
    if res.best is None:  # recipe auto always holds out; a sweep without a selected row cannot be compared
        raise SystemExit(f"{variant}: the sweep selected no config (no holdout?)")
    return entry(res.best, res.rows, seconds)


HEADER = (f"{'store':<8} {'variant':<7} {'eval top-1':>10} {'95% interval':>15} {'params':>9} {'train s':>8} "
          f"{'cfgs':>5}  selected")


def table(results: Mapping[str, Mapping[str, Entry]]) -> list[str]:
    """Lines of the side-by-side table: every store's three variants, then ALF's deltas in points."""
    lines = [HEADER]
    for store, by_variant in results.items():
        for v in VARIANTS:
            e = by_variant[v]
            ci = f"[{100 * e.ci[0]:.1f}, {100 * e.ci[1]:.1f}]"
            lines.append(f"{store:<8} {v:<7} {100 * e.top1:>10.2f} {ci:>15} {e.params:>9,} {e.seconds:>8.1f} "
                         f"{e.configs:>5}  {e.name}")
    lines.append("")
    for store, by_variant in results.items():
        d = deltas(by_variant)
        lines.append(f"{store:<8} ALF - last = {d['last']:+.2f} points, ALF - concat = {d['concat']:+.2f} points")
    return lines


def deltas(by_variant: Mapping[str, Entry]) -> dict[str, float]:
    """ALF's eval top-1 minus each other variant's, in points (rounded to 1e-6: no float noise in a printed 0)."""
    alf = by_variant["alf"].top1
    return {v: round(100 * (alf - by_variant[v].top1), 6) for v in VARIANTS if v != "alf"}


DIGITS_TRAIN, DIGITS_EVAL = 100, 50  # per class: 1,000 real training digits (no augmented copies), 500 eval


def demo_store(root: Path) -> tuple[Path, str]:
    """The store `epcache demo` extracts (its shapes, its random-init ViT, every block), without the demo's sweep."""
    demo = DemoConfig()
    sh = demo.shapes
    data = make_shapes_dataset(root / "shapes", sh)
    store = root / "demo.zarr"
    extract_store(ExtractConfig(model=DEMO_MODEL, data=data, out=store, random_init=True, img_size=sh.size,
                                model_kwargs={"depth": demo.depth, "patch_size": 8}, workers=0, layers="all",
                                batch_size=32), progress=False)
    return store, (f"demo: random-init {DEMO_MODEL} ({demo.depth} blocks, width 192, patch 8, {sh.size} px), "
                   f"{sh.num_classes} shapes, {sh.num_classes * sh.train_per_class} train / "
                   f"{sh.num_classes * sh.val_per_class} eval images")


def digits_store(root: Path, cache: Path) -> tuple[Path, str]:
    """Real sklearn digits through the ViT pretrained here (bench/_pretrain.py, reused from ``cache``), every block."""
    path, reused = _pretrain.checkpoint(cache, _pretrain.PretrainConfig(), log=True)
    store = _digits.digits_pool(root, DIGITS_TRAIN, DIGITS_EVAL, path, dict(_pretrain.MODEL_KWARGS), layers="all")
    n = _digits.CLASSES
    return store, (f"digits: ViT pretrained here ({_pretrain.describe()}; checkpoint "
                   f"{'reused' if reused else 'trained'}: {path}), {n * DIGITS_TRAIN} train / {n * DIGITS_EVAL} "
                   "eval real digits")
