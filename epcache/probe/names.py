"""The ``--head`` vocabulary that sits below every probe package: the built-in head kinds.

Trained heads are named by the registry (:func:`epcache.probe.heads.list_heads`), which imports
torch; solver heads are a fixed set. Heads (in their unknown-kind message), solvers (to split
``--head``) and the listing read these tuples, and ``epcache probe`` checks ``--head`` against them
before torch is imported, so they live here, torch-free (a test holds them equal to the registry's).
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "BUILTIN_HEAD_KINDS", "DENSE_KINDS", "LINEAR_FITS", "SOLVER_KINDS", "TRAINED_HEAD_KINDS", "known_heads_text",
    "unknown_head_text",
]

SOLVER_KINDS: tuple[str, ...] = ("knn", "ridge", "logreg", "ncm")  # fitted once on pooled features, no epochs
LINEAR_FITS: tuple[str, ...] = ("auto", "both", "sgd", "lstsq")  # --linear-fit (epcache.probe.solvers._lstsq)
TRAINED_HEAD_KINDS: tuple[str, ...] = (  # the registry's built-in trained heads, sorted as list_heads() is
    "abmilp", "aim", "alf", "cae", "cait", "cbam", "clip", "coca", "dinovit", "dolg", "ep", "esimpool", "jepa",
    "linear", "mhca", "mp", "siglip", "simpool",
)
BUILTIN_HEAD_KINDS: tuple[str, ...] = TRAINED_HEAD_KINDS + SOLVER_KINDS  # list_heads() + list_solvers() at import
# per-patch heads scored by mIoU (epcache.probe.dense.registry.DENSE_HEADS, which asserts the same names)
DENSE_KINDS: tuple[str, ...] = ("dense-knn", "dense-logreg", "seg-linear", "hummingbird")


def known_heads_text(trained: Sequence[str], solvers: Sequence[str]) -> str:
    """``registered kinds: ...; solver heads: ...``: what an unknown-head message offers instead.

    ``--head`` takes both families in one list, so a user who mistypes one must see both.
    """
    return (f"registered kinds: {', '.join(trained)} (trained); solver heads (fitted, no training): "
            f"{', '.join(solvers)} (`epcache heads` lists them all)")


def unknown_head_text(kind: str, text: str, trained: Sequence[str], solvers: Sequence[str]) -> str:
    """The sweep's problem line for a ``--head`` entry whose kind is neither trained nor solver."""
    return f"unknown head kind {kind!r} in {text!r}; {known_heads_text(trained, solvers)}"
