"""`epcache probe --store 'OUT/*.zarr'`: the same sweep over every store of a series.

Each store's sweep is an ordinary run with its own results.jsonl, in RUNDIR/<store stem>/, so
resuming, the report and the board read it as they read any run. A checkpoint series (every store
records ``extra.checkpoint``, as ``epcache extract --weights 'ckpts/*.pth'`` writes it) probed
without ``--head`` gets a small default sweep: k-NN, logistic regression and the linear heads'
lr grid, which trains in one fused pass; the solver heads cost seconds per store.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from epcache._storepeek import read_local_zarr_document
from epcache.errors import ConfigError, StoreNotFoundError

if TYPE_CHECKING:
    from epcache.probe import ProbeConfig

__all__ = ["CHECKPOINT_SWEEP", "is_checkpoint_series", "probe_series", "run_series", "series_run_dir",
           "series_stores"]

CHECKPOINT_SWEEP = "knn,logreg,linear"  # a checkpoint series' sweep when --head is not given
_GLOB = re.compile(r"[*?\[]")


def series_stores(text: str) -> list[str] | None:
    """The stores ``--store`` names when it names several (a glob or a comma list), else None.

    Raises:
        ConfigError: a glob that matches no store.
    """
    if "," not in text and not _GLOB.search(text):
        return None
    stores: list[str] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        if _GLOB.search(item):
            hits = sorted(h.rstrip("/") for h in glob.glob(str(Path(item).expanduser())))
            if not hits:
                raise ConfigError(f"--store {item!r} matches no store; check the directory and the pattern "
                                  "(quote it so the shell does not expand it), e.g. --store 'stores/series/*.zarr'")
            stores.extend(hits)
        else:
            stores.append(item)
    names = [Path(s).stem for s in stores]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"stores named {', '.join(twice)} appear twice in --store; each store's run directory "
                          "is RUNDIR/<store stem>, so every stem must differ")
    return stores


def series_run_dir(out: str | None, store: str) -> str | None:
    """Where one store's sweep goes: ``RUNDIR/<store stem>`` (None without --out: nothing saved)."""
    return None if out is None else str(Path(out) / Path(store.rstrip("/")).stem)


def is_checkpoint_series(stores: list[str]) -> bool:
    """Whether every store records the checkpoint it was extracted from (``extra.checkpoint``)."""
    for store in stores:
        try:
            doc = read_local_zarr_document(store)
        except StoreNotFoundError:
            return False
        if doc is None or not isinstance((doc.get("extra") or {}).get("checkpoint"), dict):
            return False
    return bool(stores)


def run_series(members: list[tuple[str, ProbeConfig]], *, progress: bool, plan_all: bool = False) -> None:
    """Probe each (label, config) in turn, after every member's options were checked.

    ``plan_all`` also plans every member's sweep (store reads, no training) before the first trains, so a
    refusal of the last member costs no training of the first.

    Raises:
        EpcacheError: the first member refused, before any training; or the first whose sweep fails, the
            members before it keeping their runs.
    """
    from epcache.cli.probe_check import precheck_probe  # lazy: keeps zarr, numpy out of `epcache --help`

    for _, cfg in members:  # every member's typos answered before the first sweep starts
        precheck_probe(cfg)
    from epcache.probe import probe_store  # lazy: torch loads only once the options and stores look right

    if plan_all:
        from epcache.probe.run import check_sweep  # lazy: as probe_store

        for _, cfg in members:
            check_sweep(cfg)
    for label, cfg in members:
        typer.echo(f"== {label}")
        typer.echo(probe_store(cfg, progress=progress).summary)


def probe_series(
    ctx: typer.Context, stores: list[str], make_config: Callable[[Mapping[str, Any]], ProbeConfig], *, progress: bool
) -> None:
    """Run ``epcache probe``'s sweep over each store in turn, each into its own run directory.

    ``make_config`` is `epcache probe`'s own option reader, applied to each store's options.

    Raises:
        ConfigError: ``--eval-store`` with a series (each checkpoint is scored on its own store).
        EpcacheError: the first store whose sweep fails; the stores before it keep their runs.
    """
    params: Mapping[str, Any] = ctx.params
    if params.get("eval_store"):
        raise ConfigError("--eval-store with a series of stores would score every checkpoint on one store's "
                          "tokens; drop --eval-store (each store is scored on its own --eval-split)")
    overrides: dict[str, Any] = {}
    source = ctx.get_parameter_source("head")  # by name: typer may carry its own copy of click's enum
    if getattr(source, "name", None) == "DEFAULT" and is_checkpoint_series(stores):
        overrides["head"] = CHECKPOINT_SWEEP
        typer.echo(f"checkpoint series of {len(stores)} stores: sweep --head {CHECKPOINT_SWEEP} (pass --head to "
                   "choose)", err=True)
    configs = [make_config({**params, **overrides, "store": s, "out": series_run_dir(params.get("out"), s)})
               for s in stores]
    run_series(list(zip(stores, configs, strict=True)), progress=progress)
    if params.get("out"):
        typer.echo(f"one run directory per store under {params['out']}; checkpoint curve: "
                   f"epcache board --by checkpoint {params['out']}/*")

