"""The report's dense part: the dense rows in rank order and the mask panel of the best one.

The table and the "best" are the one ranking's (:func:`~epcache.probe.results.ranking.rank_rows`,
dense rows by holdout mIoU); the panel draws the best row's stored eval predictions
(``RUNDIR/dense/<id>.npz``, written beside the row by the probe) next to their ground truth, so
the figure shows what the row's numbers were computed from, never a re-prediction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from epcache.errors import ConfigError
from epcache.probe.results.predictions import read_predictions
from epcache.probe.results.ranking import DENSE_RANKING, best_row, rank_rows
from epcache.report._files import write_atomically

__all__ = ["DENSE_FIGURE", "DensePanel", "dense_lines", "dense_panel", "plot_dense_masks"]

DENSE_FIGURE = "dense_masks.png"
IGNORE_COLOUR = (0.6, 0.6, 0.6)  # unlabelled pixels (the ignore index) in the panel


@dataclass(frozen=True)
class DensePanel:
    """What the mask figure draws: the best dense row and its first eval images' masks."""

    row: dict[str, Any]
    pred: np.ndarray  # [m, H, W] predicted class per pixel
    truth: np.ndarray  # [m, H, W] ground truth (ignore index where unlabelled)
    classes: tuple[str, ...]
    ignore_index: int


def dense_panel(run: Path, rows: list[dict[str, Any]]) -> DensePanel:
    """The panel of the best dense row (by the ranking), read from its stored predictions.

    Raises:
        ConfigError: the row's predictions file is missing (a run directory copied without ``dense/``).
    """
    best = best_row(rank_rows(rows)[0])
    path = run / best["dense_file"]
    if not path.is_file():
        raise ConfigError(f"{path} is missing: the dense row {best['id'][:10]} keeps its eval predictions there; "
                          "copy the run directory whole, or rerun the probe")
    arrays = read_predictions(path)
    return DensePanel(best, arrays["pred"], arrays["truth"], tuple(best["data"]["class_map"]),
                      int(best["data"]["ignore_index"]))


def plot_dense_masks(panel: DensePanel, path: Path, *, title: str) -> Path:
    """Ground truth (top) over prediction (bottom) for each stored eval image, one colour per class."""
    from epcache.report._plots import require_matplotlib  # matplotlib: only a report with figures imports it

    plt = require_matplotlib()
    m = panel.pred.shape[0]
    colours = plt.get_cmap("tab10" if len(panel.classes) <= 10 else "tab20")(np.arange(len(panel.classes)))[:, :3]
    fig, axes = plt.subplots(2, max(1, m), figsize=(2.0 * max(1, m) + 1.6, 4.4), squeeze=False)
    for j in range(m):
        for i, (mask, what) in enumerate(((panel.truth[j], "truth"), (panel.pred[j], "predicted"))):
            ax = axes[i][j]
            ax.imshow(_paint(mask, colours, panel.ignore_index), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(what)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours[c]) for c in range(len(panel.classes))]
    fig.legend(handles, panel.classes, loc="center right", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(right=0.80)
    write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)
    return path


def dense_lines(rows: list[dict[str, Any]], figure: str | None) -> list[str]:
    """The report's dense section: one line per dense row in rank order, then the mask panel."""
    ranked = [best_row(g) for g in rank_rows(rows)]
    out = ["## Dense probes", "",
           f"Ranked by {DENSE_RANKING} (the eval split is scored once); mIoU and pixel accuracy in %; majority: the "
           "most frequent training class predicted everywhere.", "",
           "| id | head | layer | chosen | holdout mIoU | eval mIoU | pixel acc | majority mIoU |",
           "|---|---|---:|---|---:|---:|---:|---:|"]
    for r in ranked:
        ev = r["metrics"]["eval"]
        chosen = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in r.get("chosen", {}).items() if k not in ("seed", "holdout"))
        out.append(f"| `{r['id'][:10]}` | {r['kind']} | {','.join(map(str, r['input']['layers']))} | {chosen} | "
                   f"{_pct(r['metrics']['holdout']['miou'])} | {_pct(ev['miou'])} | {_pct(ev['pixel_acc'])} | "
                   f"{_pct(ev.get('majority_miou'))} |")
    best = ranked[0]
    per_class = best["metrics"]["eval"]["per_class_iou"]
    out += ["", f"Per-class eval IoU of the best dense row `{best['id'][:10]}` ({best['name']}): "
            + ", ".join(f"{k} {_pct(v)}" for k, v in per_class.items()) + ".", ""]
    if figure is not None:
        caption = (f"Eval images of the best dense row ({best['name']}): ground truth (top) and its stored "
                   "predictions (bottom); grey: unlabelled.")
        out += [f"![{caption}]({figure})", "", caption, ""]
    return out


def _paint(mask: np.ndarray, colours: np.ndarray, ignore_index: int) -> np.ndarray:
    img = np.empty((*mask.shape, 3), np.float64)
    img[:] = IGNORE_COLOUR
    known = (mask != ignore_index) & (mask < len(colours))
    img[known] = colours[mask[known]]
    return img


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * float(x):.2f}"
