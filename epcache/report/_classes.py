"""Per-class accuracy and the confusion matrix of the best config, with class names where they are known.

A top-1 of 80 % can hide a class the probe never gets right; the per-class table and the
confusion matrix show which. Rows hold per-class accuracies (``metrics.eval.per_class``) and,
up to :data:`~epcache.probe.results.metrics.CONFUSION_MAX_CLASSES` classes, the eval confusion
counts; names come from the eval store when it is still where the row says, else class indices.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from epcache.errors import EpcacheError
from epcache.probe.results.metrics import CONFUSION_MAX_CLASSES
from epcache.report._files import write_atomically
from epcache.report._plots import DPI, require_matplotlib
from epcache.store import open_store

__all__ = ["class_names", "confusion_note", "per_class_table", "plot_confusion"]


def class_names(row: Mapping[str, Any]) -> list[str]:
    """The eval split's class names from the store the row names, or ``"0"``, ``"1"``, ... when it moved."""
    per_class = (row["metrics"]["eval"] or {}).get("per_class") or []
    store = row.get("eval_store") or row.get("store") or {}
    split = str((row.get("config") or {}).get("eval_split", "val"))
    try:
        with open_store(str(store.get("path", ""))) as st:
            names = [str(c) for c in st.split(split).classes]
    except (EpcacheError, OSError, ValueError, KeyError):
        names = []
    return names if len(names) == len(per_class) else [str(i) for i in range(len(per_class))]


def per_class_table(row: Mapping[str, Any], names: Sequence[str]) -> str:
    """One markdown line per class: eval samples (from the confusion counts when stored) and top-1."""
    per_class = row["metrics"]["eval"].get("per_class") or []
    confusion = row["metrics"]["eval"].get("confusion")
    lines = ["| class | name | eval samples | eval top-1 |", "|---:|---|---:|---:|"]
    for i, (name, acc) in enumerate(zip(names, per_class, strict=True)):
        n = str(sum(confusion[i])) if confusion is not None else "-"
        cell = "-" if acc is None else f"{100 * acc:.2f}"
        lines.append(f"| {i} | {name} | {n} | {cell} |")
    return "\n".join(lines)


def confusion_note(row: Mapping[str, Any]) -> str | None:
    """Why the row has no confusion matrix (None when it has one)."""
    if row["metrics"]["eval"].get("confusion") is not None:
        return None
    num_classes = len(row["metrics"]["eval"].get("per_class") or [])
    if num_classes > CONFUSION_MAX_CLASSES:
        return (f"The confusion matrix is not stored for more than {CONFUSION_MAX_CLASSES} classes "
                f"(this run has {num_classes}).")
    return "The confusion matrix is not in these rows (written by an older epcache)."


def plot_confusion(row: Mapping[str, Any], names: Sequence[str], path: Path, *, title: str) -> Path:
    """The eval confusion counts normalised per true class (each row sums to 1), counts in the cells."""
    plt = require_matplotlib()
    counts = row["metrics"]["eval"]["confusion"]
    c = len(counts)
    rates = [[v / max(1, sum(r)) for v in r] for r in counts]
    side = min(12.0, max(4.5, 0.28 * c + 2.5))
    fig, ax = plt.subplots(figsize=(side + 1.2, side), dpi=100, layout="constrained")
    try:
        im = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
        if c <= 20:  # counts readable only on small matrices
            for i, r in enumerate(counts):
                for j, v in enumerate(r):
                    ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                            color="white" if rates[i][j] > 0.5 else "black")
        labels = list(names) if c <= 40 else [str(i) for i in range(c)]
        step = 1 if c <= 40 else max(1, c // 20)
        ax.set_xticks(range(0, c, step), labels[::step], rotation=90, fontsize=7)
        ax.set_yticks(range(0, c, step), labels[::step], fontsize=7)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        fig.colorbar(im, ax=ax, label="fraction of the true class", shrink=0.8)
        fig.suptitle(title, fontsize=10)
        write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=DPI))
    finally:
        plt.close(fig)
    return path
