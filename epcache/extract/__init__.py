"""Stage 1: run a frozen timm backbone once over a dataset and write per-layer tokens to a store.

``extract_store(config)`` is what ``epcache extract`` calls; ``plan_extract(config)`` is its
``--dry-run``; ``list_model_aliases()`` backs ``epcache models``.
"""

from epcache._deprecated import extract as extract  # the old name of extract_store, for one release
from epcache._layerspec import parse_layers as parse_layers
from epcache.extract._config import ExtractConfig as ExtractConfig
from epcache.extract._config import ExtractPlan as ExtractPlan
from epcache.extract._config import ExtractResult as ExtractResult
from epcache.extract._config import SplitPlan as SplitPlan
from epcache.extract._models import ModelAlias as ModelAlias
from epcache.extract._models import ResolvedModel as ResolvedModel
from epcache.extract._models import list_model_aliases as list_model_aliases
from epcache.extract._models import resolve_model as resolve_model
from epcache.extract._repair import RepairResult as RepairResult
from epcache.extract._repair import extract_config_from_store as extract_config_from_store
from epcache.extract._repair import repair_store as repair_store
from epcache.extract._run import extract_store as extract_store
from epcache.extract._run import plan_extract as plan_extract
from epcache.extract._series import Checkpoint as Checkpoint
from epcache.extract._series import extract_series as extract_series
from epcache.extract._series import is_series as is_series
from epcache.extract._series import list_checkpoints as list_checkpoints

__all__ = [
    "Checkpoint",
    "ExtractConfig",
    "ExtractPlan",
    "ExtractResult",
    "ModelAlias",
    "RepairResult",
    "ResolvedModel",
    "SplitPlan",
    "extract_config_from_store",
    "extract_series",
    "extract_store",
    "is_series",
    "list_checkpoints",
    "list_model_aliases",
    "parse_layers",
    "plan_extract",
    "repair_store",
    "resolve_model",
]
