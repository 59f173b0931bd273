"""The paper's figures for any backbone: accuracy vs parameters, accuracy vs layer, learning curves.

matplotlib is an optional extra (``pip install epcache[plot]``); it is imported here only, with
the non-interactive Agg backend so reports render on headless machines.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from epcache.errors import ConfigError
from epcache.report._tables import ConfigGroup, best_by

__all__ = ["FIGSIZE", "plot_curves", "plot_layers", "plot_params", "require_matplotlib"]

FIGSIZE = (7.0, 4.5)  # inches; at DPI this is 840 x 540 pixels, readable at README width
DPI = 120
MARKERS = {"linear": "o", "ep": "*", "mhca": "s", "jepa": "^", "siglip": "v", "aim": "D", "simpool": "P",
           "cait": "X", "coca": "h", "cae": "<", "abmilp": ">", "dinovit": "p", "clip": "8", "cbam": "d",
           "dolg": "H", "esimpool": "1"}


def require_matplotlib() -> Any:
    """Import pyplot with the Agg backend, or explain how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError(
            "the report figures need matplotlib: pip install 'epcache[plot]' (or pass --no-figures)"
        ) from None
    return plt


def plot_params(groups: Sequence[ConfigGroup], path: Path, *, title: str) -> Path:
    """Top-1 vs trainable parameters (log x), one marker per head kind, as the paper's Figure 2."""
    plt = require_matplotlib()
    best = best_by(groups, lambda g: g.variant)
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    kinds_done: set[str] = set()
    for g in sorted(best.values(), key=lambda g: g.params):
        m, s = g.eval_top1
        ax.errorbar(
            g.params, 100 * m, yerr=100 * s if g.seeds > 1 else None, fmt=MARKERS.get(g.kind, "o"),
            markersize=11 if g.kind == "ep" else 8, color=_color(g.kind), capsize=3,
            label=g.kind if g.kind not in kinds_done else None,
        )
        kinds_done.add(g.kind)
        ax.annotate(g.variant, (g.params, 100 * m), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters of the probe (log scale)")
    ax.set_ylabel("eval top-1 accuracy (%)")
    ax.set_title(title, fontsize=11)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="head kind", fontsize=8, loc="best")
    return _save(fig, path)


def plot_layers(groups: Sequence[ConfigGroup], path: Path, *, title: str) -> Path:
    """Top-1 vs layer, one line per head kind (best config of that kind at each layer)."""
    plt = require_matplotlib()
    best = best_by(groups, lambda g: (g.kind, g.layer))
    by_kind: dict[str, list[ConfigGroup]] = defaultdict(list)
    for (kind, _), g in best.items():
        by_kind[kind].append(g)
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    layers: set[int] = set()
    for kind, gs in sorted(by_kind.items()):
        gs.sort(key=lambda g: g.layer)
        layers.update(g.layer for g in gs)
        ax.plot([g.layer for g in gs], [100 * g.eval_top1[0] for g in gs], marker=MARKERS.get(kind, "o"),
                color=_color(kind), label=kind, markersize=9 if kind == "ep" else 6)
    ax.set_xticks(sorted(layers))
    ax.set_xlabel("backbone block (0 = first)")
    ax.set_ylabel("eval top-1 accuracy (%)")
    ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.legend(title="head kind (best config per layer)", fontsize=8)
    return _save(fig, path)


def plot_curves(groups: Sequence[ConfigGroup], path: Path, *, title: str) -> Path:
    """Per-epoch eval (solid) and holdout (dashed) top-1 of the selected config of each head kind."""
    plt = require_matplotlib()
    best = best_by(groups, lambda g: g.kind)
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    for kind, g in sorted(best.items()):
        row = g.rows[0]
        curves = row["curves"]
        epochs = list(range(1, len(curves["eval_top1"]) + 1))
        cfg = row["config"]
        label = f"{g.variant} L{g.layer} lr={cfg['lr']:.3g}"
        ax.plot(epochs, [None if v is None else 100 * v for v in curves["eval_top1"]], color=_color(kind), label=label)
        if any(v is not None for v in curves.get("holdout_top1", [])):
            ax.plot(epochs, [None if v is None else 100 * v for v in curves["holdout_top1"]], color=_color(kind),
                    linestyle="--", alpha=0.6)
        sel = row["selected_epoch"]
        ax.plot([sel + 1], [100 * row["metrics"]["eval"]["top1"]], marker="o", color=_color(kind), markersize=7)
    ax.plot([], [], color="gray", label="eval split (solid)")
    ax.plot([], [], color="gray", linestyle="--", label="holdout (dashed)")
    ax.plot([], [], color="gray", marker="o", linestyle="none", label="selected epoch")
    ax.set_xlabel("epoch")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_title(title, fontsize=11)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def _color(kind: str) -> str:
    palette = {"linear": "tab:blue", "ep": "tab:red", "mhca": "tab:green", "jepa": "tab:purple",
               "siglip": "tab:brown", "aim": "tab:pink", "simpool": "tab:olive", "cait": "tab:cyan"}
    return palette.get(kind, "tab:gray")


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
