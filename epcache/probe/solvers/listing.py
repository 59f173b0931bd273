"""The solver heads in `epcache heads`, beside the trained heads.

``--head`` takes two families in one list: trained heads (the registry: linear, ep, mhca, ...),
which run epochs of SGD, and solver heads (knn, ridge, logreg, ncm), which are fitted once on
pooled features. A user reads the names off `epcache heads`, so it shows both families; the
registry alone knows only the trained ones. It lives above both (it sizes the logreg C path), so
neither the registry nor the solvers import the listing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from epcache.probe.heads import HeadCost, format_heads_table
from epcache.probe.names import SOLVER_KINDS
from epcache.probe.solvers._logreg import c_grid

__all__ = ["SolverHead", "format_heads_listing", "format_solver_table", "solver_heads"]


@dataclass(frozen=True, slots=True)
class SolverHead:
    """One solver head kind as `epcache heads` lists it."""

    kind: str
    params: int  # numbers the fitted head keeps (the k-NN bank of train vectors is not counted)
    fits: str  # what fitting computes
    cost: str  # the work of one fit, in terms of N train / N_eval samples, D and C
    options: str  # its --head options and their defaults


def solver_heads(dim: int = 768, num_classes: int = 1000) -> list[SolverHead]:
    """The solver heads in the order `--head` documents them, sized for width ``dim`` and ``num_classes``."""
    d, c = dim, num_classes
    rows = {
        "knn": SolverHead(
            "knn", 0, "nothing: softmax votes of the k nearest train vectors (cosine)",
            "one N_eval x N x D similarity search serves every k and T; keeps the N x D train bank",
            "k=10,20,100,200 (--k), T=0.07 (--temperature), select='fixed' (k=20) or 'holdout'"),
        "ridge": SolverHead(
            "ridge", (d + 1) * c, "closed-form least squares on standardised features, ±1 targets",
            "one pass of float64 sums, one eigh of D x D (N x N if N <= D); every lambda from it",
            "grid='scaled' (37 lambdas, holdout-picked), 'bigvision' (one lambda) or a list"),
        "logreg": SolverHead(
            "logreg", d * c + c, "multinomial L2 logistic regression (scikit-learn's C)",
            "full-batch L-BFGS along the C path, warm-started; each step ~N x D x C multiply-adds",
            f"C='dinov2' ({len(c_grid('dinov2'))} values, --c-preset), clip, raptor or a list"),
        "ncm": SolverHead(
            "ncm", d + c * d + c, "class means of the centred, L2-normalised train vectors",
            "one pass of sums over the train set", "none"),
    }
    return [rows[k] for k in SOLVER_KINDS]


def format_solver_table(rows: Iterable[SolverHead]) -> str:
    """A section after the trained heads' table: kind, saved params and what it fits, then cost and options."""
    rows = list(rows)
    lines = [
        "solver heads: fitted once on pooled tokens (--tokens cls, gap, cls+gap); no epochs, no lr;",
        "  --shots K,... and --tries N run the few-shot protocol; N = train samples, D = width, C = classes",
    ]
    header = ("kind", "saved params", "fits")
    body = [(r.kind, f"{r.params:,}", r.fits) for r in rows]
    w0 = max(len(x[0]) for x in [header, *body])
    w1 = max(len(x[1]) for x in [header, *body])
    lines.append(f"{header[0]:<{w0}}  {header[1]:>{w1}}  {header[2]}")
    lines.append(f"{'-' * w0}  {'-' * w1}  {'-' * max(len(x[2]) for x in body)}")
    pad = " " * (w0 + 2)
    for r, (kind, params, fits) in zip(rows, body, strict=True):
        lines.append(f"{kind:<{w0}}  {params:>{w1}}  {fits}")
        lines.append(f"{pad}cost: {r.cost}")
        lines.append(f"{pad}options: {r.options}")
    return "\n".join(lines)


def format_heads_listing(rows: Sequence[HeadCost], *, dim: int, num_classes: int) -> str:
    """What `epcache heads` prints: the trained heads' cost table, its MP note, then the solver heads."""
    parts = ["trained heads: epochs of SGD on the stored tokens; forward FLOPs per image", format_heads_table(rows)]
    mp = next((r for r in rows if r.kind == "mp"), None)
    if mp is not None:  # docs/PROBE_FAMILIES.md §1.3: published MP counts leave out the projection
        proj = 512 * dim + 512
        parts.append(f"note: mp's {mp.params:,} include its {dim}->512 projection ({proj:,});\n"
                     f"      the MP paper counts without it ({(mp.params - proj) / 1e6:.2f} M here, 3.65 M at ViT-B)")
    parts.append("")
    parts.append(format_solver_table(solver_heads(dim, num_classes)))
    return "\n".join(parts)

