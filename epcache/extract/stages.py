"""The stages of an extraction, public for the launchers (units of blocks) and convert.

A launcher runs the same backbone load, plan, store target, block loop and writer as
``epcache extract``, one unit at a time; importing them from here keeps one extraction code path
without reaching into the package's private modules. Importing this module loads numpy, zarr and
PIL; torch and timm load when a stage runs.
"""

from __future__ import annotations

from epcache.extract._backbone import load_backbone
from epcache.extract._blocks import RESUME_HINT, extract_split
from epcache.extract._dist import distributed_context, exit_on_sigterm, torchrun_world_size
from epcache.extract._forward import TokenExtractor
from epcache.extract._loader import make_loader
from epcache.extract._pooled_output import PooledTokenExtractor, ensure_pooled
from epcache.extract._prepare import prepare, store_meta
from epcache.extract._target import open_or_create
from epcache.extract._writer import BlockWriter

__all__ = [
    "RESUME_HINT", "BlockWriter", "PooledTokenExtractor", "TokenExtractor", "distributed_context", "ensure_pooled",
    "exit_on_sigterm", "extract_split", "load_backbone", "make_loader", "open_or_create", "prepare", "store_meta",
    "torchrun_world_size",
]
