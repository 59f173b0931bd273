"""Stage 2: probes trained or fitted on cached tokens; ``probe_store(config)`` is the entry point.

Subpackages by concept: ``sweep`` (the request, its grid file, the runs), ``data`` (which rows,
which tokens, streamed batches), ``heads`` (trained heads and their registry), ``train`` (recipes,
the resolved protocol, stacked heads and optimisers, the fused trainer), ``solvers`` (k-NN, ridge,
logistic C path, nearest class mean), ``results`` (rows, heads on disk, metrics, the ranking);
``run`` resolves a config once, plans the groups and dispatches them.
"""

from epcache._deprecated import probe as probe  # the old name of probe_store, for one release
from epcache.probe.data.select import TrainSubsets as TrainSubsets
from epcache.probe.data.select import split_train as split_train
from epcache.probe.data.stream import BatchStream as BatchStream
from epcache.probe.data.stream import InputPlan as InputPlan
from epcache.probe.results.metrics import Metrics as Metrics
from epcache.probe.results.metrics import metrics_from_counts as metrics_from_counts
from epcache.probe.results.metrics import metrics_from_logits as metrics_from_logits
from epcache.probe.results.rows import ResultRowJSON as ResultRowJSON
from epcache.probe.results.rows import format_summary as format_summary
from epcache.probe.results.rows import load_head as load_head
from epcache.probe.results.rows import read_results as read_results
from epcache.probe.results.rows import seed_summary as seed_summary
from epcache.probe.run import ProbeResult as ProbeResult
from epcache.probe.run import probe_store as probe_store
from epcache.probe.sweep.config import ProbeConfig as ProbeConfig
from epcache.probe.sweep.config import parse_heads as parse_heads
from epcache.probe.sweep.config import parse_layers as parse_layers
from epcache.probe.sweep.config import parse_list as parse_list
from epcache.probe.sweep.grid import RunSpec as RunSpec
from epcache.probe.sweep.grid import SweepSettings as SweepSettings
from epcache.probe.sweep.grid import expand_sweep as expand_sweep
from epcache.probe.sweep.grid import load_grid as load_grid
from epcache.probe.train.fused import EPStack as EPStack
from epcache.probe.train.fused import HeadStack as HeadStack
from epcache.probe.train.fused import LinearStack as LinearStack
from epcache.probe.train.fused import MHCAStack as MHCAStack
from epcache.probe.train.fused import ModuleStack as ModuleStack
from epcache.probe.train.fused import make_stack as make_stack
from epcache.probe.train.protocol import Protocol as Protocol
from epcache.probe.train.protocol import resolve_protocol as resolve_protocol
from epcache.probe.train.recipes import RECIPES as RECIPES
from epcache.probe.train.recipes import Recipe as Recipe
from epcache.probe.train.stacked_optim import SlicedOptimizer as SlicedOptimizer

__all__ = [
    "RECIPES",
    "BatchStream",
    "EPStack",
    "HeadStack",
    "InputPlan",
    "LinearStack",
    "MHCAStack",
    "Metrics",
    "ModuleStack",
    "ProbeConfig",
    "ProbeResult",
    "Protocol",
    "Recipe",
    "ResultRowJSON",
    "RunSpec",
    "SlicedOptimizer",
    "SweepSettings",
    "TrainSubsets",
    "expand_sweep",
    "format_summary",
    "load_grid",
    "load_head",
    "make_stack",
    "metrics_from_counts",
    "metrics_from_logits",
    "parse_heads",
    "parse_layers",
    "parse_list",
    "probe_store",
    "read_results",
    "resolve_protocol",
    "seed_summary",
    "split_train",
]
