"""epcache results rows as rows of the EP benchmark's ``results.csv`` (``epcache board --format ep-results``).

One row per store (encoder). Each arm's config is the best of its family by the one ranking
(:mod:`epcache.probe.results.ranking`), ranked over every row given so the honesty of the ranking
does not depend on the family, and the arm's variant is read off the tokens that config read:

- ``lp``: linear heads on one layer's ``cls`` (lp_variant ``cls``) or ``gap`` (``pos``). The schema
  asks for ``cls``, so GAP configs are candidates only when no ``cls`` config was run or the caller
  pins ``lp_variant=pos`` with its ``gap_reason`` (the README picks the variant from the architecture,
  never by running both and keeping the higher number).
- ``ep``: EP heads on one layer's ``patch`` (ep_variant ``ep``) or ``all`` tokens (``ep_all``: the
  CLS is among the attended values, with any registers the store keeps); ``ep_queries`` is the config's M.
  With ``gap_reason=no_cls`` only ``patch`` configs count: ``all`` then holds no CLS to be ``ep_all``.
- ``knn``: k-NN on the representation the LP read (the README: k-NN reads the same representation);
  ``knn_k``/``knn_T`` are the pair the holdout chose.

Numbers are top-1 in percent with two decimals, as the benchmark records them. Its numbers are "the best
epoch" on the validation split, which is the ranking module's oracle (:data:`ranking.ORACLE_RULE`), so a
trained arm reports its config's oracle and a solver arm (k-NN, no epochs) its eval top-1 at the chosen
(k, T). Columns epcache cannot know (family, method, arch, pretrain, eval, image_size, logs, ...) come
from ``describe``; a row still missing one is refused by :func:`write_ep_results` with the rule and fix.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from epcache._fs.atomic import atomic_write
from epcache.board.ep_rules import EP_RESULTS_COLUMNS, EP_ROW_RULES, check_ep_row
from epcache.errors import ConfigError
from epcache.probe.results.ranking import SeedGroup, best_row, oracle_top1, rank_rows

__all__ = [
    "DEFAULT_LOADER",
    "EP_RESULTS_COLUMNS",
    "check_ep_row",
    "ep_results_rows",
    "export_ep_results",
    "parse_describe",
    "write_ep_results",
]

DEFAULT_LOADER = "timm"
"""epcache extracts through timm, so its stores reproduce with the benchmark's ``--timm`` loader."""

_LP_VARIANT = {"cls": "cls", "gap": "pos"}  # linear tokens -> lp_variant
_EP_VARIANT = {"patch": "ep", "all": "ep_all"}  # EP tokens -> ep_variant
_MEASURED = frozenset({"lp", "lp_gap", "ep", "ep_queries", "knn", "knn_k", "knn_T", "model", "loader"})
_PINS = frozenset({"lp_variant", "ep_variant", "gap_reason"})  # chosen by the caller from the architecture


def ep_results_rows(
    rows: Iterable[dict[str, Any]],
    *,
    model: str | None = None,
    loader: str | None = None,
    describe: Mapping[str, str] | None = None,
) -> list[dict[str, str]]:
    """One EP ``results.csv`` row per store of ``rows`` (ResultRowJSON dicts), in first-seen store order.

    Args:
        rows: results rows of one or more runs (``read_results``).
        model: the ``model`` column; default the timm name the store recorded.
        loader: the ``loader`` column; default :data:`DEFAULT_LOADER`.
        describe: the other columns for every row (family, method, arch, pretrain, eval, image_size, logs,
            notes, ...), and optionally the variants to report: ``lp_variant`` / ``ep_variant`` restrict
            that arm to configs of the variant (with ``gap_reason`` for ``pos``), as the README asks them
            to be chosen from the encoder rather than from the scores.

    Raises:
        ConfigError: ``describe`` names a column that is not in the schema or that the rows measure, or
            pins ``ep_all`` for an encoder it says has no [CLS].
    """
    about = dict(describe or {})
    unknown = sorted(set(about) - set(EP_RESULTS_COLUMNS))
    measured = sorted(set(about) & _MEASURED)
    if unknown or measured:
        what = f"unknown EP results column(s) {unknown}" if unknown else f"measured column(s) {measured}"
        raise ConfigError(f"describe: {what}; describe gives only {', '.join(_describable())}")
    if about.get("gap_reason") == "no_cls" and about.get("ep_variant") == "ep_all":
        raise ConfigError("describe: ep_variant=ep_all puts the [CLS] among EP's values, but gap_reason=no_cls "
                          "says the encoder has none; drop one of them")
    rows = list(rows)
    ranked = rank_rows(rows)  # one ranking over everything; each arm filters it
    stores: dict[str, dict[str, Any]] = {}
    for r in rows:
        stores.setdefault(str(r["store"]["provenance"]), r["store"])
    return [_row_for(prov, store, ranked, model, loader, about) for prov, store in stores.items()]


def export_ep_results(
    path: Path | str,
    rows: Iterable[dict[str, Any]],
    *,
    model: str | None = None,
    loader: str | None = None,
    describe: Mapping[str, str] | None = None,
) -> list[dict[str, str]]:
    """:func:`ep_results_rows` then :func:`write_ep_results`: what ``epcache board --format ep-results`` runs.

    Returns the rows written. Raises :class:`ConfigError` as those two do; nothing is written then.
    """
    out = ep_results_rows(rows, model=model, loader=loader, describe=describe)
    write_ep_results(path, out)
    return out


def parse_describe(items: Iterable[str]) -> dict[str, str]:
    """``describe`` from ``column=value`` words (one per repeated CLI option; values may hold commas).

    Raises:
        ConfigError: a word without ``=`` or a column given twice.
    """
    out: dict[str, str] = {}
    for item in items:
        col, sep, value = item.partition("=")
        col = col.strip()
        if not sep or not col:
            raise ConfigError(f"describe: {item!r} is not column=value (e.g. family=MIM)")
        if col in out:
            raise ConfigError(f"describe: column {col!r} given twice")
        out[col] = value.strip()
    return out


def write_ep_results(path: Path | str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write ``rows`` as the EP benchmark's ``results.csv`` (its columns, its order), whole or not at all.

    Raises:
        ConfigError: a row breaks a rule of the benchmark (named with its text and the fix); nothing is written.
    """
    problems = []
    for i, row in enumerate(rows, start=1):
        for line in check_ep_row(row):
            rule = line.split(":", 1)[0]
            problems.append(f"row {i} ({row.get('model') or '?'}): {line} [rule: {EP_ROW_RULES[rule]}]")
    if problems:
        raise ConfigError("EP results rows break the benchmark's rules: " + " | ".join(problems))
    extra = sorted({k for row in rows for k in row} - set(EP_RESULTS_COLUMNS))
    if extra:
        raise ConfigError(f"EP results rows carry columns outside the schema: {extra}")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=EP_RESULTS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: "" if row.get(c) is None else str(row.get(c)) for c in EP_RESULTS_COLUMNS})
    data = buf.getvalue().encode("utf-8")
    atomic_write(Path(path), lambda f: f.write(data))


def _row_for(
    provenance: str, store: Mapping[str, Any], ranked: Sequence[SeedGroup], model: str | None, loader: str | None,
    about: Mapping[str, str],
) -> dict[str, str]:
    out = {c: "" for c in EP_RESULTS_COLUMNS}
    out.update({k: str(v) for k, v in about.items()})
    out["model"] = model if model is not None else str(store.get("backbone") or "")
    out["loader"] = loader if loader is not None else DEFAULT_LOADER
    mine = [g for g in ranked if str(best_row(g)["store"]["provenance"]) == provenance]

    lp_tokens = _lp_tokens(mine, about)
    lp = _first(mine, lambda r: _plain(r, "linear") and _tokens(r) in lp_tokens)
    out["lp"], out["lp_gap"] = "-", ""
    if lp is not None:
        variant = _LP_VARIANT[_tokens(best_row(lp))]
        out.update(lp=_percent(_trained_top1(lp)), lp_variant=variant, lp_gap="yes" if variant == "pos" else "no")
    elif "lp_variant" in about:
        out["lp_gap"] = "yes" if about["lp_variant"] == "pos" else "no"

    ep_tokens = [t for t, v in _EP_VARIANT.items() if about.get("ep_variant") in (None, v)]
    if about.get("gap_reason") == "no_cls":  # then ``all`` holds no CLS (registers at most): not ep_all
        ep_tokens = [t for t in ep_tokens if t != "all"]
    ep = _first(mine, lambda r: _plain(r, "ep") and _tokens(r) in ep_tokens)
    out["ep"] = "-"
    if ep is not None:
        head = best_row(ep)
        out.update(ep=_percent(_trained_top1(ep)), ep_queries=str(head["config"]["head_options"]["queries"]),
                   ep_variant=_EP_VARIANT[_tokens(head)])

    knn_tokens = [_tokens(best_row(lp))] if lp is not None else lp_tokens
    knn = _first(mine, lambda r: _plain(r, "knn") and _tokens(r) in knn_tokens)
    if knn is not None:
        solver = best_row(knn).get("solver") or {}
        out.update(knn=_percent(knn.mean("eval")), knn_k=str(solver.get("k", "")), knn_T=str(solver.get("T", "")))
    return out


def _lp_tokens(groups: Sequence[SeedGroup], about: Mapping[str, str]) -> list[str]:
    """The linear inputs the LP arm may report: the pinned variant, else cls when a cls config ran, else gap."""
    pinned = about.get("lp_variant")
    if pinned in ("cls", "pos"):
        return ["cls" if pinned == "cls" else "gap"]
    if about.get("gap_reason") in ("no_cls", "attn_pool"):
        return ["gap"]
    has_cls = any(_plain(best_row(g), "linear") and _tokens(best_row(g)) == "cls" for g in groups)
    return ["cls"] if has_cls else ["gap"]


def _first(ranked: Sequence[SeedGroup], keep: Callable[[dict[str, Any]], bool]) -> SeedGroup | None:
    return next((g for g in ranked if keep(best_row(g))), None)


def _plain(row: Mapping[str, Any], kind: str) -> bool:
    """A config of ``kind`` on one stored layer and the whole train split, as the benchmark trains.

    Layer mixes, few-shot draws and train fractions have no column in the schema, so they never stand for an arm.
    """
    inp = row.get("input") or {}
    cfg = row["config"]
    return (cfg["kind"] == kind and inp.get("layer_mix", "none") in (None, "none")
            and len(inp.get("layers") or [cfg.get("layer")]) == 1 and cfg.get("shots") in (None, 0)
            and cfg.get("fraction") in (None, 1, 1.0))


def _tokens(row: Mapping[str, Any]) -> str:
    return str((row.get("input") or {}).get("tokens") or row["config"].get("tokens"))


def _trained_top1(group: SeedGroup) -> float:
    """The benchmark's best-epoch number: the seed-mean oracle, or eval top-1 where no curve was scored."""
    oracle = oracle_top1(group)
    return oracle[0] if oracle is not None else group.mean("eval")


def _percent(x: float) -> str:
    return f"{100.0 * x:.2f}"


def _describable() -> list[str]:
    return [c for c in EP_RESULTS_COLUMNS if c not in _MEASURED]
