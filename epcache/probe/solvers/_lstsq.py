"""The linear family: SGD cross-entropy heads and the closed-form least-squares classifier, one choice.

A "linear probe" is fitted two ways in the literature: by SGD on cross-entropy (MAE, DINOv2,
the EP paper) or in closed form by least squares on one-hot targets (big_vision's few-shot
``fewshot_lsr``, this package's ``ridge``). Which wins depends on the features, not on the
probe: on well-conditioned features cross-entropy leads, while on features whose class signal
sits in low-variance, correlated directions least squares can lead by ten points at a few
hundred images (bench/probe_quality.py measures both). So under the default ``auto`` recipe a
``--head linear`` sweep fits both and lets the run's one selection rule (holdout or cvK, the
same for every row) choose; a named recipe reproduces its paper's SGD probe only. The closed
form costs one pass over pooled vectors and one ``eigh``, small next to the SGD grid.

The candidate is an ordinary ``ridge`` solver row (its id is the one ``--head ridge`` would
give, so asking for both does not fit it twice); the plan says once that it was added.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from epcache.errors import ConfigError
from epcache.probe.names import LINEAR_FITS
from epcache.probe.solvers._spec import split_heads
from epcache.probe.solvers.vectors import POOLINGS
from epcache.probe.sweep.checks import split_head

__all__ = ["LinearFamily", "linear_family", "linear_family_note", "resolve_fit"]


class LinearFamily:
    """How one block's ``linear`` heads are fitted: the trained heads kept and the least-squares heads added."""

    def __init__(self, trained: tuple[str, ...], lstsq: tuple[str, ...], tokens: tuple[str, ...], fit: str) -> None:
        self.trained = trained  # the block's trained heads, linear ones dropped under --linear-fit lstsq
        self.lstsq = lstsq  # solver head texts to add ("ridge" or a one-lambda ridge without selection)
        self.tokens = tokens  # pooled token kinds the linear heads read (empty: the solvers' default rule)
        self.fit = fit  # the resolved fit: both | sgd | lstsq

    @property
    def note(self) -> str | None:
        """The plan's one line when the family is more than the trained heads asked for."""
        if not self.lstsq:
            return None
        how = ("the closed-form least-squares linear classifier (ridge) instead of the SGD one"
               if self.fit == "lstsq" else
               "also the closed-form least-squares linear classifier (ridge, same input) beside the SGD heads; "
               "the selection rule chooses between them")
        return f"linear: {how} (--linear-fit sgd|lstsq|both; auto: both under recipe auto, sgd under named recipes)"


def resolve_fit(fit: str, recipe: str) -> str:
    """``auto`` -> ``both`` under the default recipe, ``sgd`` under a named (paper) recipe.

    Raises:
        ConfigError: not one of :data:`LINEAR_FITS`.
    """
    if fit not in LINEAR_FITS:
        raise ConfigError(f"--linear-fit must be one of {', '.join(LINEAR_FITS)}, got {fit!r}")
    if fit == "auto":
        return "both" if recipe == "auto" else "sgd"
    return fit


def linear_family(config: Any, trained: Sequence[str], *, selects: bool) -> LinearFamily:
    """The trained heads and least-squares candidates of a block whose ``--head`` list has ``trained``.

    ``selects``: whether the plan's rule can choose a lambda (a holdout or folds); without one the
    candidate is big_vision's single lambda, as ``ridge(grid='bigvision')``.
    """
    fit = resolve_fit(config.heads.linear_fit, config.optim.recipe)
    suite = getattr(config.data, "protocol", "none")
    if suite != "none" and config.heads.linear_fit == "auto":
        fit = "sgd"  # a suite preset is a published protocol: its trained heads only, as under a named recipe
    elif suite != "none" and fit != "sgd":
        raise ConfigError(f"--protocol {suite} trains and refits SGD heads only; --linear-fit {fit} adds the "
                          "closed-form fit it does not define: drop --linear-fit or use --linear-fit sgd")
    linear = [t for t in trained if _kind(t) == "linear"]
    if not linear or fit == "sgd" or "none" not in config.inputs.layer_mix:
        return LinearFamily(tuple(trained), (), (), fit)
    tokens: list[str] = []
    for text in linear:
        chosen = _options(text).get("tokens")
        if chosen is not None:
            tokens.append(str(chosen))
    tokens += [t for t in config.inputs.tokens if t in POOLINGS]
    tokens = [t for t in dict.fromkeys(tokens) if t in POOLINGS]
    if not tokens and any(t not in POOLINGS for t in config.inputs.tokens):
        return LinearFamily(tuple(trained), (), (), fit)  # the linear heads read no pooled kind a solver can
    kept = tuple(t for t in trained if fit != "lstsq" or _kind(t) != "linear")
    head = "ridge" if selects else "ridge(grid='bigvision')"
    return LinearFamily(kept, (head,), tuple(tokens), fit)


def _kind(text: str) -> str | None:
    """The head kind, or None for text the trained heads' own checks will refuse in their words."""
    try:
        return split_head(text)[0]
    except ConfigError:
        return None


def _options(text: str) -> dict[str, Any]:
    try:
        return split_head(text)[1]
    except ConfigError:
        return {}


def linear_family_note(config: Any, specs: Sequence[Any]) -> str | None:
    """The plan's line for a sweep whose linear heads got a least-squares candidate (said once, not per block)."""
    trained, _ = split_heads(config.heads.head)
    if not any(s.kind == "ridge" for s in specs):
        return None
    return linear_family(config, trained, selects=True).note
