"""`epcache probe --tap block,attn_norm,mlp_hidden` (or ``--tap all``): the same sweep over each tap of a store.

Each tap's sweep is an ordinary run in RUNDIR/<tap>/, as a store series writes RUNDIR/<store stem>/
(:mod:`epcache.cli.probe_series`, whose runner this reuses), so resuming, the board and the report
read each one as any run; `epcache report RUNDIR` on the parent draws every tap beside its block.
The taps a store holds are read from its root document, without importing the store package.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from epcache._storepeek import read_local_zarr_document
from epcache.cli.probe_series import run_series
from epcache.errors import ConfigError

if TYPE_CHECKING:
    from epcache.probe import ProbeConfig

__all__ = ["ALL_TAPS", "BLOCK", "probe_tap_series", "series_taps", "store_taps"]

BLOCK = "block"  # the store's own tree: the block outputs (epcache.store.layout.taps.BLOCK)
ALL_TAPS = "all"


def store_taps(store: str) -> list[str]:
    """The taps ``store`` was extracted with, in block order (its root document lists them so)."""
    doc = read_local_zarr_document(store) if "://" not in store and not Path(store).is_file() else None
    if doc is None:  # a URL or an HDF5 file: the store package reads it
        from epcache.store import open_store  # lazy: zarr, h5py load only for a store not read as a local document

        with open_store(store) as opened:
            return list(opened.meta.taps or {})
    return list(doc.get("taps") or {})


def series_taps(store: str, text: str) -> list[str] | None:
    """The taps ``--tap`` names when it names several (a comma list or ``all``), else None.

    Raises:
        ConfigError: a tap named twice, a tap the store lacks (the message lists its taps), or ``all`` on a
            store without taps.
    """
    if text.strip() != ALL_TAPS and "," not in text:
        return None
    held = store_taps(store)
    listed = ", ".join(held) if held else "none"
    if text.strip() == ALL_TAPS:
        if not held:
            raise ConfigError(f"--tap all: {store} has no taps; extract it with --taps (e.g. --taps "
                              "attn_norm,mlp_hidden) to probe activations inside the blocks")
        return [BLOCK, *held]
    names = [t.strip() for t in text.split(",") if t.strip()]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"--tap names {', '.join(twice)} twice; each tap's run directory is RUNDIR/<tap>")
    unknown = [n for n in names if n != BLOCK and n not in held]
    if unknown:
        raise ConfigError(f"--tap {', '.join(unknown)}: {store} has no such tap (its taps: {listed}; `{BLOCK}` is "
                          "the block outputs); re-extract with --taps to add one")
    order = [BLOCK, *held]
    return sorted(names, key=order.index)


def probe_tap_series(
    ctx: typer.Context, taps: list[str], make_config: Callable[[Mapping[str, Any]], ProbeConfig], *, progress: bool
) -> None:
    """Run ``epcache probe``'s sweep on each tap in turn, each into RUNDIR/<tap>/, every plan checked first.

    Raises:
        EpcacheError: the first tap whose plan is refused, before any training; or the first whose sweep
            fails, the taps before it keeping their runs.
    """
    params: Mapping[str, Any] = ctx.params
    out = params.get("out")
    configs = [make_config({**params, "tap": tap, "out": None if out is None else str(Path(out) / tap)})
               for tap in taps]
    run_series([(f"tap {tap}", cfg) for tap, cfg in zip(taps, configs, strict=True)], progress=progress,
               plan_all=True)
    if out:
        typer.echo(f"one run directory per tap under {out}; layers and taps on one axis: epcache report {out}")
