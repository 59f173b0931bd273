"""Run extraction and probe sweeps as independent work units on a cluster: SLURM arrays, Ray, torchrun.

``submit`` plans a run into a run directory (extract: block ranges of the store; probe: one unit
per layer of the sweep) and hands the units to a launcher; ``gather`` checks that every unit
finished and commits the run (the store's coverage, or one ranked results file). The SLURM and
Ray backends import their package only when used (extras ``epcache[slurm]``, ``epcache[ray]``).
"""

from epcache.launch._rundir import IncompleteRunError, LaunchPlan, read_plan
from epcache.launch.execute import run_unit
from epcache.launch.gather import GatherResult, gather
from epcache.launch.submit import LAUNCHERS, LaunchOptions, SubmitResult, submit

__all__ = [
    "LAUNCHERS",
    "GatherResult",
    "IncompleteRunError",
    "LaunchOptions",
    "LaunchPlan",
    "SubmitResult",
    "gather",
    "read_plan",
    "run_unit",
    "submit",
]
