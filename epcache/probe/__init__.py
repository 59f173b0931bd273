"""Stage 2: probes trained or fitted on cached tokens; ``probe_store(config)`` is the entry point.

Modules in the order they import each other (a lower one never imports a higher one; the import-graph
test in tests/test_architecture.py holds it): ``names`` (the solver head kinds) -> ``heads`` (trained
heads, the registry of every head kind) -> ``config`` (the request, recipes, protocol and runs as plain
data, no torch) -> ``device`` (device, precision, shard and thread policy) -> ``data`` (which rows, which
tokens, streamed batches) -> ``results`` (rows, heads on disk, metrics, the ranking) -> ``sweep`` (the
grid file, the runs' expansion and checks, head geometry) -> ``solvers`` (k-NN, ridge, logistic C path,
nearest class mean) -> ``dense`` (per-patch heads, mIoU, correspondence) -> ``plan`` (the one plan per
sweep) -> ``train`` (stacked heads and optimisers, the fused trainer, one input group) -> ``run`` (lock,
plan, train, fit, rank, summary).

This face holds what a user of probing calls: run a sweep, read its rows and heads back, and the
named recipes; everything else is imported from the module that defines it.
"""

from typing import TYPE_CHECKING

from epcache._deprecated import probe as probe  # the old name of probe_store, for one release
from epcache._lazy import lazy_face

if TYPE_CHECKING:
    from epcache.probe.config.probe_config import ProbeConfig as ProbeConfig
    from epcache.probe.config.recipes import RECIPES as RECIPES
    from epcache.probe.config.recipes import Recipe as Recipe
    from epcache.probe.config.runspec import RunSpec as RunSpec
    from epcache.probe.results.metrics import Metrics as Metrics
    from epcache.probe.results.rows import format_summary as format_summary
    from epcache.probe.results.rows import load_head as load_head
    from epcache.probe.results.rows import read_results as read_results
    from epcache.probe.results.rows import seed_summary as seed_summary
    from epcache.probe.run import ProbeResult as ProbeResult
    from epcache.probe.run import probe_store as probe_store
    from epcache.probe.sweep.grid import expand_sweep as expand_sweep

# name -> module; imported on first touch, so the torch-free layers (names, config) load without torch:
# `epcache probe` checks its options and the store's metadata through them before torch is imported
_FACE: dict[str, str] = {
    "ProbeConfig": "epcache.probe.config.probe_config",
    "RECIPES": "epcache.probe.config.recipes",
    "Recipe": "epcache.probe.config.recipes",
    "RunSpec": "epcache.probe.config.runspec",
    "Metrics": "epcache.probe.results.metrics",
    "format_summary": "epcache.probe.results.rows",
    "load_head": "epcache.probe.results.rows",
    "read_results": "epcache.probe.results.rows",
    "seed_summary": "epcache.probe.results.rows",
    "ProbeResult": "epcache.probe.run",
    "probe_store": "epcache.probe.run",
    "expand_sweep": "epcache.probe.sweep.grid",
}


__getattr__, __dir__ = lazy_face(__name__, _FACE, globals())


__all__ = [
    "RECIPES",
    "Metrics",
    "ProbeConfig",
    "ProbeResult",
    "Recipe",
    "RunSpec",
    "expand_sweep",
    "format_summary",
    "load_head",
    "probe",
    "probe_store",
    "read_results",
    "seed_summary",
]
