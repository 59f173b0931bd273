"""Stage 2: probes trained or fitted on cached tokens; ``probe(config)`` is the entry point.

Subpackages by concept: ``sweep`` (the request, its grid file, the runs), ``data`` (which rows,
which tokens, streamed batches), ``heads`` (trained heads and their registry), ``train`` (recipes,
the resolved protocol, stacked heads and optimisers, the fused trainer), ``solvers`` (k-NN, ridge,
logistic C path, nearest class mean), ``results`` (rows, heads on disk, metrics, the ranking);
``run`` resolves a config once, plans the groups and dispatches them. ``names``: the solver head
kinds, which heads, solvers and the listing all read, below every package.

This face holds what a user of probing calls: run a sweep, read its rows and heads back, and the
named recipes; everything else is imported from the module that defines it.
"""

from epcache._lazy import callable_module as _callable
from epcache.probe.results.metrics import Metrics as Metrics
from epcache.probe.results.rows import format_summary as format_summary
from epcache.probe.results.rows import load_head as load_head
from epcache.probe.results.rows import read_results as read_results
from epcache.probe.results.rows import seed_summary as seed_summary
from epcache.probe.run import ProbeResult as ProbeResult
from epcache.probe.run import probe as probe
from epcache.probe.sweep.config import ProbeConfig as ProbeConfig
from epcache.probe.sweep.grid import RunSpec as RunSpec
from epcache.probe.sweep.grid import expand_sweep as expand_sweep
from epcache.probe.train.recipes import RECIPES as RECIPES
from epcache.probe.train.recipes import Recipe as Recipe

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
