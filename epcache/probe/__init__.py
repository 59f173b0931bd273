"""Stage 2: probes trained or fitted on cached tokens; ``probe(config)`` is the entry point.

Subpackages by concept: ``config`` (the request, recipes, protocol and runs as plain data, no torch),
``sweep`` (the grid file, the runs' expansion and checks, the one plan per sweep), ``data`` (which rows,
which tokens, streamed batches), ``heads`` (trained heads, the registry of every head kind), ``train``
(device policy, stacked heads and optimisers, the fused trainer), ``solvers`` (k-NN, ridge,
logistic C path, nearest class mean), ``results`` (rows, heads on disk, metrics, the ranking);
``run`` executes the one plan per sweep: groups, solver heads, ranking, summary. ``names``: the solver head
kinds, which heads, solvers and the listing all read, below every package.

This face holds what a user of probing calls: run a sweep, read its rows and heads back, and the
named recipes; everything else is imported from the module that defines it.
"""

from epcache._lazy import callable_module as _callable
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
from epcache.probe.run import probe as probe
from epcache.probe.sweep.grid import expand_sweep as expand_sweep

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
    "read_results",
    "seed_summary",
]

# `epcache.probe(cfg)` works even after `import epcache.probe` bound the package here
_callable("epcache.probe", "probe")
