"""Figure: eval top-1 per layer mix and token source, one panel per head kind.

Which layers and which tokens a head reads can move a frozen encoder's number as much as the
head itself (AIM's mean of layers, DINOv2's concatenation, PE's pooled output vs GAP), so the
report shows, for each head kind, the best config of every (input layers, token source) pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from epcache.report._plots import DPI, _save, require_matplotlib
from epcache.report._tables import ConfigGroup, best_by, input_label

__all__ = ["input_label", "plot_mixes"]


def plot_mixes(groups: Sequence[ConfigGroup], path: Path, *, title: str) -> Path:
    """Grouped bars: x = input layers (single / mixes / pooled), bars = token source, a panel per head kind."""
    plt = require_matplotlib()
    best = best_by(groups, lambda g: (g.kind, input_label(g), g.tokens))
    kinds = sorted({k for k, _, _ in best})
    cols = min(3, len(kinds))
    rows = -(-len(kinds) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), dpi=DPI, squeeze=False,
                             layout="constrained")  # nothing clipped: titles, tick labels and legends get room
    for ax, kind in zip(axes.flat, kinds, strict=False):
        cells = {(lab, tok): g for (k, lab, tok), g in best.items() if k == kind}
        inputs = sorted({lab for lab, _ in cells}, key=lambda s: (s != "single layer", s == "pooled output", s))
        sources = sorted({tok for _, tok in cells})
        width = 0.8 / len(sources)
        for j, tok in enumerate(sources):
            xs, ys, errs = [], [], []
            for i, lab in enumerate(inputs):
                if (lab, tok) in cells:
                    m, s = cells[(lab, tok)].eval_top1
                    xs.append(i - 0.4 + width * (j + 0.5))
                    ys.append(100 * m)
                    errs.append(100 * s)
            ax.bar(xs, ys, width=width, yerr=errs if any(errs) else None, capsize=2, label=tok)
        ax.set_xticks(range(len(inputs)))
        ax.set_xticklabels(inputs, rotation=20 if len(inputs) > 2 else 0, ha="right" if len(inputs) > 2 else "center",
                           fontsize=8)
        ax.set_title(kind, fontsize=10)
        ax.set_ylabel("eval top-1 (%)")
        ax.set_ylim(0, 118)  # headroom for the legend above the bars; ticks stop at 100
        ax.set_yticks(range(0, 101, 20))
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(title="tokens", fontsize=7, title_fontsize=7, loc="upper center", ncols=max(1, len(sources)),
                  frameon=False)
    for ax in list(axes.flat)[len(kinds) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)
