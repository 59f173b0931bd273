"""Stage 2: train probe heads on cached tokens."""

from epcache._lazy import callable_module as _callable
from epcache.probe.config import ProbeConfig as ProbeConfig
from epcache.probe.config import parse_heads as parse_heads
from epcache.probe.config import parse_layers as parse_layers
from epcache.probe.config import parse_list as parse_list
from epcache.probe.fused import EPStack as EPStack
from epcache.probe.fused import HeadStack as HeadStack
from epcache.probe.fused import LinearStack as LinearStack
from epcache.probe.fused import MHCAStack as MHCAStack
from epcache.probe.fused import ModuleStack as ModuleStack
from epcache.probe.fused import make_stack as make_stack
from epcache.probe.grid import RunSpec as RunSpec
from epcache.probe.grid import SweepSettings as SweepSettings
from epcache.probe.grid import expand_sweep as expand_sweep
from epcache.probe.grid import load_grid as load_grid
from epcache.probe.metrics import Metrics as Metrics
from epcache.probe.metrics import metrics_from_counts as metrics_from_counts
from epcache.probe.metrics import metrics_from_logits as metrics_from_logits
from epcache.probe.protocol import Protocol as Protocol
from epcache.probe.protocol import resolve_protocol as resolve_protocol
from epcache.probe.recipes import RECIPES as RECIPES
from epcache.probe.recipes import Recipe as Recipe
from epcache.probe.results import ResultRowJSON as ResultRowJSON
from epcache.probe.results import format_summary as format_summary
from epcache.probe.results import load_head as load_head
from epcache.probe.results import read_results as read_results
from epcache.probe.results import seed_summary as seed_summary
from epcache.probe.run import ProbeResult as ProbeResult
from epcache.probe.run import probe as probe
from epcache.probe.select import TrainSubsets as TrainSubsets
from epcache.probe.select import split_train as split_train
from epcache.probe.stacked_optim import SlicedOptimizer as SlicedOptimizer
from epcache.probe.stream import BatchStream as BatchStream
from epcache.probe.stream import InputPlan as InputPlan

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
    "probe",
    "read_results",
    "resolve_protocol",
    "seed_summary",
    "split_train",
]

# `epcache.probe(cfg)` works even after `import epcache.probe` bound the package here
_callable("epcache.probe", "probe")
