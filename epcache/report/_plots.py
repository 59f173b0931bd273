"""The paper's figures for any backbone: accuracy vs parameters, accuracy vs layer, learning curves.

matplotlib is an optional extra (``pip install epcache[plot]``); it is imported here only, with
the non-interactive Agg backend so reports render on headless machines. Every figure uses the
same legend order (:data:`KIND_ORDER`), keeps its legend outside the axes (it never covers
data), keeps accuracy axes within 0-100 %, and labels points with short labels that are moved
until they overlap nothing and stay inside the axes (see :mod:`epcache.report._labels`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from epcache._text import variant_label
from epcache.errors import ConfigError
from epcache.report._files import write_atomically
from epcache.report._labels import place_labels
from epcache.report._tables import ConfigGroup, best_by, input_label

__all__ = ["FIGSIZE", "KIND_ORDER", "curves_figure", "layers_figure", "params_figure", "plot_curves", "plot_layers",
           "plot_params", "require_matplotlib"]

FIGSIZE = (7.0, 4.5)  # inches; at DPI this is 840 x 540 pixels, readable at README width
DPI = 120
KIND_ORDER = ("linear", "ep", "mhca", "jepa", "siglip", "aim", "simpool", "cait", "coca", "cae", "abmilp",
              "dinovit", "clip", "cbam", "dolg", "esimpool")  # legend order of every figure
MARKERS = {"linear": "o", "ep": "*", "mhca": "s", "jepa": "^", "siglip": "v", "aim": "D", "simpool": "P",
           "cait": "X", "coca": "h", "cae": "<", "abmilp": ">", "dinovit": "p", "clip": "8", "cbam": "d",
           "dolg": "H", "esimpool": "1"}
LEGEND = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "fontsize": 8, "borderaxespad": 0.0}
AXES_RIGHT = 0.80  # the axes end here; the legend sits in the strip to their right


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


def kind_order(kinds: Iterable[str]) -> list[str]:
    """Head kinds in the one legend order: the paper's (linear, ep, mhca, ...), unknown kinds last."""
    rank = {k: i for i, k in enumerate(KIND_ORDER)}
    return sorted(set(kinds), key=lambda k: (rank.get(k, len(rank)), k))


def plot_params(groups: Sequence[ConfigGroup], path: Path, *, title: str) -> Path:
    """Write :func:`params_figure` to ``path``."""
    return _save(params_figure(groups, title=title), path)


def plot_layers(groups: Sequence[ConfigGroup], path: Path, *, title: str) -> Path:
    """Write :func:`layers_figure` to ``path``."""
    return _save(layers_figure(groups, title=title), path)


def plot_curves(groups: Sequence[ConfigGroup], path: Path, *, title: str) -> Path:
    """Write :func:`curves_figure` to ``path``."""
    return _save(curves_figure(groups, title=title), path)


def params_figure(groups: Sequence[ConfigGroup], *, title: str) -> Any:
    """Top-1 vs trainable parameters (log x), one marker per head kind, as the paper's Figure 2.

    Each point is the best config of one head variant; its label says which (``ep q16``) and
    where it came from (layer and lr), so a reader can find it in report.md.
    """
    plt = require_matplotlib()
    best = best_by([g for g in groups if g.params > 0], lambda g: g.variant)  # k-NN learns no parameters
    fig, ax = _figure(plt)
    texts: list[tuple[float, float, str]] = []
    for kind in kind_order(g.kind for g in best.values()):
        gs = sorted((g for g in best.values() if g.kind == kind), key=lambda g: g.params)
        for i, g in enumerate(gs):
            m, s = g.eval_top1
            ax.errorbar(g.params, 100 * m, yerr=100 * s if g.seeds > 1 else None, fmt=MARKERS.get(kind, "o"),
                        markersize=11 if kind == "ep" else 8, color=_color(kind), capsize=3,
                        label=kind if i == 0 else None, clip_on=False, zorder=3)
            texts.append((g.params, 100 * m, f"{_variant(g)}\nL{g.layer}{_lr(g.rows[0]['config'])}"))
    ax.set_xscale("log")
    xs = [t[0] for t in texts]
    ax.set_xlim(min(xs) / 2.5, max(xs) * 2.5)  # room for labels on both sides
    _accuracy_axis(ax, [t[1] for t in texts])
    ax.set_xlabel("trainable parameters of the probe (log scale)")
    ax.set_ylabel("eval top-1 accuracy (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="head kind", **LEGEND)
    return _finish(fig, title=title, labels=texts)


def layers_figure(groups: Sequence[ConfigGroup], *, title: str) -> Any:
    """Top-1 vs block, one line per head kind (best config of that kind at each block).

    Only single-block inputs lie on the block axis. The pooled output and layer mixes read no one
    block, so each is a category of its own right of the blocks (markers, no line into the blocks);
    heads reading only register tokens get their own dashed line, apart from their kind's patch line.
    """
    plt = require_matplotlib()
    best = best_by(groups, lambda g: (g.kind, _registers(g), input_label(g), g.layer))
    lines: dict[tuple[str, bool], list[ConfigGroup]] = defaultdict(list)
    other: dict[str, list[ConfigGroup]] = defaultdict(list)
    for g in best.values():
        if input_label(g) == "single layer":
            lines[(g.kind, _registers(g))].append(g)
    for g in best_by(groups, lambda g: (g.kind, input_label(g))).values():
        if input_label(g) != "single layer":
            other[g.kind].append(g)
    fig, ax = _figure(plt)
    layers = sorted({g.layer for gs in lines.values() for g in gs})
    categories = sorted({input_label(g) for gs in other.values() for g in gs}, key=lambda s: (s != "pooled output", s))
    start = (layers[-1] if layers else -1) + 1.5  # the categories sit right of the last block, after a gap
    where = {c: start + i for i, c in enumerate(categories)}
    ys: list[float] = []
    texts: list[tuple[float, float, str]] = []
    for kind in kind_order([k for k, _ in lines] + list(other)):
        size = 9 if kind == "ep" else 6
        legend: str | None = kind  # the kind's first artist carries its legend entry
        for reg in (False, True):
            gs = sorted(lines.get((kind, reg), []), key=lambda g: g.layer)
            if not gs:
                continue
            y = [100 * g.eval_top1[0] for g in gs]
            ys += y
            ax.plot([g.layer for g in gs], y, marker=MARKERS.get(kind, "o"), color=_color(kind),
                    label=f"{kind} [registers]" if reg else legend, linestyle="--" if reg else "-",
                    markersize=size, clip_on=False, zorder=3)
            if not reg:
                legend = None
            if len(layers) == 1 and not reg:  # one point per kind: say which head it is
                texts.append((gs[0].layer, y[0], _variant(gs[0])))
        for g in other.get(kind, []):
            ys.append(100 * g.eval_top1[0])
            ax.plot([where[input_label(g)]], [ys[-1]], marker=MARKERS.get(kind, "o"), color=_color(kind),
                    linestyle="none", markersize=size, clip_on=False, zorder=3, label=legend)
            legend = None
    ax.set_xticks([*layers, *where.values()], [str(x) for x in layers] + categories)
    if categories:
        if layers:
            ax.axvline(start - 0.75, color="0.6", linewidth=0.8, linestyle=":")
        for tick in ax.get_xticklabels()[len(layers):]:
            tick.set_fontsize(7)
    if len(layers) == 1 and not categories:
        ax.set_xlim(layers[0] - 1, layers[0] + 1)
        ax.text(0.5, 0.02, f"only block {layers[0]} was probed", transform=ax.transAxes, ha="center",
                va="bottom", fontsize=8, color="0.35")
    elif categories:
        lo = layers[0] if layers else start
        ax.set_xlim(lo - 0.5, start + len(categories) - 0.5)
    _accuracy_axis(ax, ys)
    ax.set_xlabel("backbone block (0 = first)" + ("; right: inputs of no single block" if categories else ""))
    ax.set_ylabel("eval top-1 accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(title="head kind\n(best per layer)", **LEGEND)
    return _finish(fig, title=title, labels=texts)


def curves_figure(groups: Sequence[ConfigGroup], *, title: str) -> Any:
    """Per-epoch eval (solid) and holdout (dashed) top-1 of the selected config of each head kind."""
    plt = require_matplotlib()
    trained = [g for g in groups if not g.rows[0]["config"].get("solver")]  # solver heads have no epochs
    best = best_by(trained, lambda g: g.kind)
    fig, ax = _figure(plt)
    ys: list[float] = []
    for kind in kind_order(best):
        g = best[kind]
        row = g.rows[0]
        curves = row["curves"]
        epochs = list(range(1, len(curves["eval_top1"]) + 1))
        label = f"{_variant(g)}\nL{g.layer}{_lr(row['config'])}"
        ev = [None if v is None else 100 * v for v in curves["eval_top1"]]  # None: eval scored only at the end
        ys += [v for v in ev if v is not None]
        ax.plot(epochs, ev, color=_color(kind), label=label)
        hold = curves.get("holdout_top1", [])
        if any(v is not None for v in hold):
            ax.plot(epochs, [None if v is None else 100 * v for v in hold], color=_color(kind), linestyle="--",
                    alpha=0.6)
            ys += [100 * v for v in hold if v is not None]
        sel = row["selected_epoch"]
        ax.plot([sel], [100 * row["metrics"]["eval"]["top1"]], marker="o", color=_color(kind), markersize=7,
                clip_on=False)
    ax.plot([], [], color="gray", label="eval split (solid)")
    ax.plot([], [], color="gray", linestyle="--", label="holdout (dashed)")
    ax.plot([], [], color="gray", marker="o", linestyle="none", label="selected epoch")
    _accuracy_axis(ax, ys)
    ax.set_xlabel("epoch")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(True, alpha=0.3)
    ax.legend(**LEGEND)
    return _finish(fig, title=title, labels=[])


def _variant(g: ConfigGroup) -> str:
    cfg = g.rows[0]["config"]
    return variant_label(g.kind, cfg.get("head_options") or {}, g.tokens)


def _registers(g: ConfigGroup) -> bool:
    """A head reading register tokens only (no patch tokens): a different input from its kind's patch line."""
    return g.tokens == "registers"


def _figure(plt: Any) -> tuple[Any, Any]:
    fig, ax = plt.subplots(figsize=FIGSIZE, dpi=DPI)
    fig.subplots_adjust(left=0.09, right=AXES_RIGHT, bottom=0.11, top=0.86)
    return fig, ax


def _accuracy_axis(ax: Any, ys: Sequence[float]) -> None:
    """Accuracy limits that never pass 0 or 100 %, with a margin where there is room for one."""
    lo, hi = (min(ys), max(ys)) if ys else (0.0, 100.0)
    pad = max(2.0, 0.08 * (hi - lo))
    bottom, top = max(0.0, lo - pad), min(100.0, hi + pad)
    ax.set_ylim(bottom, top + (1.5 if top >= 100.0 else 0.0))  # a line at 100 % stays visible above the spine
    ticks = [t for t in ax.get_yticks() if bottom <= t <= 100.0]
    ax.set_yticks(ticks)  # no tick past 100 %
    ax.set_ylim(bottom, top + (1.5 if top >= 100.0 else 0.0))


def _color(kind: str) -> str:
    palette = {"linear": "tab:blue", "ep": "tab:red", "mhca": "tab:green", "jepa": "tab:purple",
               "siglip": "tab:brown", "aim": "tab:pink", "simpool": "tab:olive", "cait": "tab:cyan"}
    return palette.get(kind, "tab:gray")


def _finish(fig: Any, *, title: str, labels: Sequence[tuple[float, float, str]]) -> Any:
    """Title over the axes, then the point labels (placed last: they measure the final layout)."""
    fig.suptitle(title, fontsize=10, x=(0.09 + AXES_RIGHT) / 2)
    place_labels(fig.axes[0], labels)
    return fig


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=DPI))  # a full disk leaves no cut PNG
    finally:
        plt.close(fig)
    return path


def _lr(config: dict[str, Any]) -> str:
    """", lr 0.01" for trained heads; solver heads (k-NN, ridge, logreg, ncm) have none."""
    return f", lr {float(config['lr']):.2g}" if "lr" in config else ""
