"""Probe heads: pooling -> BatchNorm1d(affine=False) -> Linear, as in the EP paper (docs/EP_SPEC.md §1-3).

Kinds: ``linear`` (CLS / GAP / both), ``ep`` (Efficient Probing, evaluated pooling-first),
``mhca`` (generic multi-head cross-attention), ``alf`` (Attentive Layer Fusion over the CLS and
GAP token of several layers, docs/ALF.md) and the reference poolers ``jepa``, ``siglip``,
``aim``, ``simpool``, ``esimpool``, ``cait``, ``coca``, ``cae``, ``abmilp``, ``dinovit``,
``clip``, ``cbam``, ``dolg``, and ``mp`` (Moment Probing, its own structure: CLS + covariances).
Attention maps (``attention(tokens) -> (B, P, N)``): every kind
except ``linear`` and ``dinovit``; for ``cbam``/``dolg`` they are unnormalised spatial scores.
"""

from ._alf import AttentiveLayerFusion as AttentiveLayerFusion
from ._base import Pooling as Pooling
from ._base import ProbeHead as ProbeHead
from ._builtin import POOLING_CLASSES as POOLING_CLASSES
from ._class_attn_pools import CaiTPooler as CaiTPooler
from ._class_attn_pools import CoCaPooler as CoCaPooler
from ._cost import BASELINE_KINDS as BASELINE_KINDS
from ._cost import HeadCost as HeadCost
from ._cost import format_heads_table as format_heads_table
from ._cost import head_cost as head_cost
from ._cost import heads_table as heads_table
from ._ep import EfficientProbing as EfficientProbing
from ._ep import EPOrder as EPOrder
from ._grid_pools import CBAMPooler as CBAMPooler
from ._grid_pools import DOLGPooler as DOLGPooler
from ._linear import TOKEN_CHOICES as TOKEN_CHOICES
from ._linear import TokenSelect as TokenSelect
from ._mhca import MultiHeadCrossAttention as MultiHeadCrossAttention
from ._mp import MomentProbing as MomentProbing
from ._mp import mp_feature_size as mp_feature_size
from ._reference import from_reference as from_reference
from ._registry import SOLVER_KINDS as SOLVER_KINDS
from ._registry import HeadFactory as HeadFactory
from ._registry import HeadKind as HeadKind
from ._registry import HeadSpec as HeadSpec
from ._registry import create_head as create_head
from ._registry import head_kind as head_kind
from ._registry import head_options as head_options
from ._registry import known_heads_text as known_heads_text
from ._registry import list_heads as list_heads
from ._registry import list_solvers as list_solvers
from ._registry import register_head as register_head
from ._registry import register_solver as register_solver
from ._token_pools import ABMILPPooler as ABMILPPooler
from ._token_pools import CLIPPooler as CLIPPooler
from ._token_pools import DinoViTPooler as DinoViTPooler
from ._token_pools import ESimPoolPooler as ESimPoolPooler
from ._token_pools import SimPoolPooler as SimPoolPooler
from ._vector import VectorInput as VectorInput
from ._xattn_pools import AIMPooler as AIMPooler
from ._xattn_pools import CAEPooler as CAEPooler
from ._xattn_pools import JEPAPooler as JEPAPooler
from ._xattn_pools import SigLIPPooler as SigLIPPooler

__all__ = [
    "BASELINE_KINDS",
    "POOLING_CLASSES",
    "SOLVER_KINDS",
    "TOKEN_CHOICES",
    "ABMILPPooler",
    "AIMPooler",
    "AttentiveLayerFusion",
    "CAEPooler",
    "CBAMPooler",
    "CLIPPooler",
    "CaiTPooler",
    "CoCaPooler",
    "DOLGPooler",
    "DinoViTPooler",
    "EPOrder",
    "ESimPoolPooler",
    "EfficientProbing",
    "HeadCost",
    "HeadFactory",
    "HeadKind",
    "HeadSpec",
    "JEPAPooler",
    "MomentProbing",
    "MultiHeadCrossAttention",
    "Pooling",
    "ProbeHead",
    "SigLIPPooler",
    "SimPoolPooler",
    "TokenSelect",
    "VectorInput",
    "create_head",
    "format_heads_table",
    "from_reference",
    "head_cost",
    "head_kind",
    "head_options",
    "heads_table",
    "known_heads_text",
    "list_heads",
    "list_solvers",
    "mp_feature_size",
    "register_head",
    "register_solver",
]
