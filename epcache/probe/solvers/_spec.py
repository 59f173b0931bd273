"""Solver configs of a sweep: which heads are solvers, their options, and one ``SolverSpec`` per row.

``--head knn,ridge,logreg,ncm,linear,ep`` names solver heads and trained heads in one list;
:func:`split_heads` separates them (by their kind in the head registry, options in parentheses as for trained heads:
``knn(k=[10,20],T=[0.07],select='holdout')``), and :func:`expand_solver_specs` turns the solver
part into specs: head x layer x tokens (cls / gap / cls+gap) x shots x try. Every spec has a
canonical ``name`` that prints back as a head spec and a stable ``id`` (a hash of everything
that changes its numbers, store provenance included), like a trained config's, so results rows
of both kinds share one results.jsonl and one skip-if-finished rule.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from epcache.errors import ConfigError
from epcache.probe.heads import head_kind
from epcache.probe.names import SOLVER_KINDS
from epcache.probe.solvers._fewshot import check_fewshot
from epcache.probe.solvers._knn import check_knn_options
from epcache.probe.solvers._logreg import C_PRESETS, c_grid
from epcache.probe.solvers._ridge import RIDGE_GRIDS
from epcache.probe.solvers.vectors import POOLINGS
from epcache.probe.sweep.checks import split_head

__all__ = [
    "FIXED_KNN_PAIR",
    "SOLVER_KINDS",
    "SolverSettings",
    "SolverSpec",
    "expand_solver_specs",
    "parse_head",
    "split_heads",
]

FIXED_KNN_PAIR = (20, 0.07)  # DINO's default: the headline k-NN number unless select='holdout'
_OPTIONS: dict[str, tuple[str, ...]] = {
    "knn": ("k", "T", "select", "metric", "weighting", "standardize"),
    "ridge": ("grid", "standardize"),
    "logreg": ("C", "max_iter", "tol", "standardize"),
    "ncm": ("standardize",),
}
_QUIET_DEFAULTS: dict[str, Any] = {"select": "fixed", "metric": "cosine", "weighting": "softmax", "max_iter": 1000,
                                   "tol": 1e-6, "standardize": False}  # left out of names (in the row's config)
_NEW_OPTIONS: dict[str, Any] = {"standardize": False}  # options added later: hashed only when set, so older ids hold


@dataclass(frozen=True)
class SolverSettings:
    """Settings shared by every solver spec of a sweep; part of each id."""

    data_seed: int
    holdout: float
    fraction: float | None
    dtype: str
    train_split: str
    eval_split: str
    store_provenance: str
    eval_provenance: str
    selection: str = "holdout"  # the plan's rule: holdout, cvK or none (few-shot draws may narrow cvK per draw)

    def to_json(self) -> dict[str, Any]:
        doc = dict(self.__dict__)
        if doc["selection"] == "holdout":  # left out, so holdout rows and ids stay those of runs before the rule
            del doc["selection"]
        return doc


@dataclass(frozen=True)
class SolverSpec:
    """One solver row: a solver head with resolved options, on one pooled input, one few-shot draw."""

    kind: str  # knn | ridge | logreg | ncm
    options: tuple[tuple[str, Any], ...]  # resolved, sorted by name
    layer: int
    tokens: str  # cls | gap | cls+gap
    shots: int | None  # per-class training samples (few-shot protocol), None: all train
    try_index: int  # few-shot draw; printed as seed= so tries aggregate like seeds (mean ± std)
    settings: SolverSettings
    id: str = field(init=False)
    name: str = field(init=False)

    def __post_init__(self) -> None:
        name = f"{self.head_name} layer={self.layer} tokens={self.tokens}"
        if self.shots is not None:
            name += f" shots={self.shots}"
        object.__setattr__(self, "name", f"{name} seed={self.try_index}")
        doc = {**self.hyperparameters(), "settings": self.settings.to_json()}
        doc["head_options"] = {k: v for k, v in doc["head_options"].items() if _NEW_OPTIONS.get(k, object()) != v}
        digest = hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        object.__setattr__(self, "id", digest[:16])

    @property
    def head_name(self) -> str:
        """``kind(opt=value,...)``: a valid ``--head`` entry."""
        shown = [(k, v) for k, v in self.options if _QUIET_DEFAULTS.get(k, object()) != v]
        if not shown:
            return self.kind
        return f"{self.kind}({','.join(f'{k}={_literal(v)}' for k, v in shown)})"

    def option(self, name: str) -> Any:
        return dict(self.options)[name]

    @property
    def standardize(self) -> bool:
        """Whether the fit rows' StandardScaler runs first (absent from options given by hand: False)."""
        return bool(dict(self.options).get("standardize", False))

    def hyperparameters(self) -> dict[str, Any]:
        """This spec's own settings as JSON (the ``config`` of its results row)."""
        return {
            "head": self.head_name,
            "kind": self.kind,
            "head_options": {k: list(v) if isinstance(v, tuple) else v for k, v in self.options},
            "layer": self.layer,
            "tokens": self.tokens,
            "shots": self.shots,
            "try": self.try_index,
            "seed": self.try_index,
            "solver": True,
        }


def split_heads(heads: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(trained heads, solver heads)`` of a ``--head`` list, each in the given order (trained ones unparsed).

    The head registry says which is which (:func:`~epcache.probe.heads.head_kind`); kinds it does not
    know stay with the trained heads, whose checks name the known kinds.
    """
    trained, solvers = [], []
    for text in heads:
        (solvers if head_kind(text) == "solver" else trained).append(text)
    return tuple(trained), tuple(solvers)


def expand_solver_specs(
    heads: Sequence[str],
    *,
    layers: Sequence[int],
    tokens: Sequence[str],
    has_cls: bool,
    shots: Sequence[int],
    tries: int,
    k: Sequence[int],
    temperature: Sequence[float],
    c_preset: str,
    settings: SolverSettings,
    standardize: bool = False,
) -> list[SolverSpec]:
    """Solver specs in sweep order (head, layer, tokens, shots, try), without duplicates.

    ``standardize`` (and the other keyword axes) are the defaults a head's parentheses override.

    Raises:
        ConfigError: every problem of the solver part of the sweep, in one message.
    """
    errors = check_fewshot(shots, tries)
    unknown = [t for t in tokens if t not in (*POOLINGS, "patch", "all")]  # patch/all: for the trained heads
    if unknown:
        errors.append(f"unknown tokens {unknown}; solver heads read {', '.join(POOLINGS)}")
    chosen = [t for t in tokens if t in POOLINGS] or (["cls"] if has_cls else ["gap"])
    unreadable = None
    if tokens and not unknown and not any(t in POOLINGS for t in tokens):  # refused, never replaced by the default
        unreadable = (f"head(s) {', '.join(repr(h) for h in heads)} cannot read tokens {list(tokens)}: solver heads "
                      f"read {', '.join(POOLINGS)} (pooled vectors); add one to --tokens or drop these heads")
        errors.append(unreadable)
    if not has_cls and any("cls" in t for t in chosen):
        errors.append("this store's backbone has no CLS token; solver heads can read tokens gap")
    defaults = {"knn": {"k": tuple(k), "T": tuple(float(t) for t in temperature), "select": "fixed",
                        "metric": "cosine", "weighting": "softmax"},
                "ridge": {"grid": "scaled"},
                "logreg": {"C": c_preset, "max_iter": 1000, "tol": 1e-6},
                "ncm": {}}
    for kind_defaults in defaults.values():
        kind_defaults["standardize"] = bool(standardize)
    specs: dict[str, SolverSpec] = {}
    for text in heads:
        try:
            kind, explicit = parse_head(text)
        except ConfigError as e:
            errors.append(str(e))
            continue
        if kind not in _OPTIONS:
            errors.append(f"{text}: {kind!r} is registered as a solver head but epcache.probe.solvers cannot fit it")
            continue
        unknown = sorted(set(explicit) - set(_OPTIONS[kind]))
        if unknown:
            errors.append(f"{text}: unknown option(s) {unknown}; {kind} takes {', '.join(_OPTIONS[kind]) or 'none'}")
            continue
        options = {**defaults[kind], **explicit}
        problem = _check_options(kind, options, settings.holdout > 0 or settings.selection != "holdout")
        if problem:
            errors.append(f"{text}: {problem}")
            continue
        resolved = tuple(sorted((n, _freeze(v)) for n, v in options.items()))
        for layer in layers:
            for tok in chosen:
                for n_shots in shots or [None]:
                    for t in range(tries):
                        spec = SolverSpec(kind, resolved, layer, tok, n_shots, t, settings)
                        specs.setdefault(spec.id, spec)
    if errors:
        unique = list(dict.fromkeys(errors))
        if unique == [unreadable]:  # the one problem: one line, as the CLI prints a user error
            raise ConfigError(f"{unreadable}; nothing was trained")
        raise ConfigError(f"{len(unique)} problem(s) in the sweep, nothing was trained:\n  - " + "\n  - ".join(unique))
    return list(specs.values())


def parse_head(text: str) -> tuple[str, dict[str, Any]]:
    """``"knn(k=[10,20],select='holdout')"`` -> ``("knn", {"k": [10, 20], "select": "holdout"})``.

    Options are Python literals read with ``ast.literal_eval`` (never ``eval``), as for trained heads.

    Raises:
        ConfigError: the text is not ``kind`` or ``kind(name=literal, ...)``.
    """
    return split_head(text)


def _check_options(kind: str, o: dict[str, Any], selects: bool) -> str | None:
    if not isinstance(o["standardize"], bool):
        return f"standardize takes True or False, got {o['standardize']!r}"
    try:
        if kind == "knn":
            ks = _as_list(o["k"], int, "k")
            ts = _as_list(o["T"], float, "T")
            check_knn_options(ks, ts, o["metric"], o["weighting"])
            if o["select"] not in ("fixed", "holdout"):
                return f"select must be 'fixed' (k=20, T=0.07) or 'holdout', got {o['select']!r}"
            headline = min(FIXED_KNN_PAIR[0], max(ks))  # k=20, or the largest k of a list capped at a small bank
            if o["select"] == "fixed" and (headline not in ks or FIXED_KNN_PAIR[1] not in ts):
                return ("the fixed headline rule reads k=20, T=0.07, which the grid lacks; add them "
                        "(--k ...,20 --temperature ...,0.07) or use knn(select='holdout')")
            if o["select"] == "holdout" and not selects:
                return "select='holdout' needs --holdout > 0"
            o["k"], o["T"] = tuple(sorted(set(ks))), tuple(dict.fromkeys(ts))
        elif kind == "ridge":
            g = o["grid"]
            if isinstance(g, str) and g not in RIDGE_GRIDS:
                return f"unknown ridge grid {g!r}; choose {', '.join(RIDGE_GRIDS)} or give a list of lambdas"
            if not isinstance(g, str):
                lams = _as_list(g, float, "grid")
                if not lams or any(not v > 0 for v in lams):
                    return f"ridge lambdas must be > 0, got {lams}"
                o["grid"] = tuple(sorted(set(lams)))
            if not selects and (g == "scaled" or (not isinstance(g, str) and len(o["grid"]) > 1)):
                return "choosing lambda needs a holdout: use --holdout > 0 or ridge(grid='bigvision') (one lambda)"
        elif kind == "logreg":
            if isinstance(o["C"], str) and o["C"] not in C_PRESETS:
                return f"unknown C preset {o['C']!r}; choose {', '.join(C_PRESETS)} or give C values"
            Cs = c_grid(o["C"] if isinstance(o["C"], str) else _as_list(o["C"], float, "C"))
            if not isinstance(o["C"], str):
                o["C"] = Cs
            if not selects and len(Cs) > 1:
                return "choosing C needs a holdout: use --holdout > 0 or a single C, e.g. logreg(C=[1.0])"
            if int(o["max_iter"]) < 1 or not float(o["tol"]) > 0:
                return f"max_iter must be >= 1 and tol > 0, got {o['max_iter']}, {o['tol']}"
    except ConfigError as e:
        return str(e)
    return None


def _as_list(v: Any, kind: type, name: str) -> list[Any]:
    values = list(v) if isinstance(v, list | tuple) else [v]
    try:
        return [kind(x) for x in values]
    except (TypeError, ValueError):
        raise ConfigError(f"{name} takes {kind.__name__} values, got {v!r}") from None


def _freeze(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def _literal(v: Any) -> str:
    if isinstance(v, tuple):
        return "[" + ",".join(_literal(x) for x in v) + "]"
    return repr(v)
