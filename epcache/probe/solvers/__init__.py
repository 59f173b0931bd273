"""Solver probes: k-NN, closed-form ridge, logistic regression over a C path, nearest class mean.

They read a pooled view of the store (CLS / GAP per layer, one streamed pass) and need no SGD
epochs; see docs/PROBE_FAMILIES.md §2-§4 and the README's "Which probe when".
"""

from epcache.probe.solvers._fewshot import check_fewshot as check_fewshot
from epcache.probe.solvers._fewshot import fewshot_rows as fewshot_rows
from epcache.probe.solvers._fewshot import shots_record as shots_record
from epcache.probe.solvers._fit import SolverInputs as SolverInputs
from epcache.probe.solvers._fit import SolverOutcome as SolverOutcome
from epcache.probe.solvers._fit import fit_solver as fit_solver
from epcache.probe.solvers._knn import KnnTable as KnnTable
from epcache.probe.solvers._knn import knn_predict as knn_predict
from epcache.probe.solvers._knn import knn_search as knn_search
from epcache.probe.solvers._knn import knn_table as knn_table
from epcache.probe.solvers._knn import knn_vote as knn_vote
from epcache.probe.solvers._logreg import C_PRESETS as C_PRESETS
from epcache.probe.solvers._logreg import LogregFit as LogregFit
from epcache.probe.solvers._logreg import c_grid as c_grid
from epcache.probe.solvers._logreg import fit_logreg as fit_logreg
from epcache.probe.solvers._logreg import logreg_path as logreg_path
from epcache.probe.solvers._lstsq import linear_family as linear_family
from epcache.probe.solvers._lstsq import linear_family_note as linear_family_note
from epcache.probe.solvers._ncm import NcmModel as NcmModel
from epcache.probe.solvers._ncm import fit_ncm as fit_ncm
from epcache.probe.solvers._ridge import EigenPath as EigenPath
from epcache.probe.solvers._ridge import RidgeStats as RidgeStats
from epcache.probe.solvers._ridge import ridge_lambdas as ridge_lambdas
from epcache.probe.solvers._ridge import ridge_system as ridge_system
from epcache.probe.solvers._ridge import standardiser as standardiser
from epcache.probe.solvers._run import check_solver_inputs as check_solver_inputs
from epcache.probe.solvers._run import load_solver_head as load_solver_head
from epcache.probe.solvers._run import plan_block_solvers as plan_block_solvers
from epcache.probe.solvers._run import plan_solvers as plan_solvers
from epcache.probe.solvers._run import run_solver_configs as run_solver_configs
from epcache.probe.solvers._spec import SOLVER_KINDS as SOLVER_KINDS
from epcache.probe.solvers._spec import SolverSpec as SolverSpec
from epcache.probe.solvers._spec import expand_solver_specs as expand_solver_specs
from epcache.probe.solvers._spec import split_heads as split_heads
from epcache.probe.solvers._standardize import Standardizer as Standardizer
from epcache.probe.solvers.vectors import POOLINGS as POOLINGS
from epcache.probe.solvers.vectors import PooledCache as PooledCache
from epcache.probe.solvers.vectors import PooledView as PooledView
from epcache.probe.solvers.vectors import pool_rows as pool_rows

__all__ = [
    "C_PRESETS",
    "POOLINGS",
    "SOLVER_KINDS",
    "EigenPath",
    "KnnTable",
    "LogregFit",
    "NcmModel",
    "PooledCache",
    "PooledView",
    "RidgeStats",
    "SolverInputs",
    "SolverOutcome",
    "SolverSpec",
    "Standardizer",
    "c_grid",
    "check_fewshot",
    "check_solver_inputs",
    "expand_solver_specs",
    "fewshot_rows",
    "fit_logreg",
    "fit_ncm",
    "fit_solver",
    "knn_predict",
    "knn_search",
    "knn_table",
    "knn_vote",
    "linear_family",
    "linear_family_note",
    "load_solver_head",
    "logreg_path",
    "plan_block_solvers",
    "plan_solvers",
    "pool_rows",
    "ridge_lambdas",
    "ridge_system",
    "run_solver_configs",
    "shots_record",
    "split_heads",
    "standardiser",
]
