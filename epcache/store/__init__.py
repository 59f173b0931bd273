"""The feature store: the on-disk contract between extraction and probing (cache_layout.md)."""

from epcache.store._base import MISSING as MISSING
from epcache.store._base import ChunkPlan as ChunkPlan
from epcache.store._base import FeatureStore as FeatureStore
from epcache.store._base import block_checksum as block_checksum
from epcache.store._base import plan_chunks as plan_chunks
from epcache.store._base import storage_permutation as storage_permutation
from epcache.store._catalog import CatalogEntry as CatalogEntry
from epcache.store._catalog import CatalogSplit as CatalogSplit
from epcache.store._catalog import find_stores as find_stores
from epcache.store._catalog import format_catalog as format_catalog
from epcache.store._catalog import list_stores as list_stores
from epcache.store._chunkcache import CacheStats as CacheStats
from epcache.store._chunkcache import ChunkCache as ChunkCache
from epcache.store._info import MissingBlock as MissingBlock
from epcache.store._info import SplitInfo as SplitInfo
from epcache.store._info import StoreInfo as StoreInfo
from epcache.store._info import describe_store as describe_store
from epcache.store._info import format_ranges as format_ranges
from epcache.store._info import format_store_info as format_store_info
from epcache.store._info import human_bytes as human_bytes
from epcache.store._integrity import check_for_probe as check_for_probe
from epcache.store._integrity import check_store_integrity as check_store_integrity
from epcache.store._lock import LockInfo as LockInfo
from epcache.store._lock import StoreLock as StoreLock
from epcache.store._lock import StoreLockedError as StoreLockedError
from epcache.store._lock import acquire_store_lock as acquire_store_lock
from epcache.store._lock import read_store_lock as read_store_lock
from epcache.store._meta import STORE_DTYPES as STORE_DTYPES
from epcache.store._meta import BackboneMeta as BackboneMeta
from epcache.store._meta import SplitMeta as SplitMeta
from epcache.store._meta import SplitSpec as SplitSpec
from epcache.store._meta import StoreMeta as StoreMeta
from epcache.store._meta import TokenLayout as TokenLayout
from epcache.store._metadoc import FORMAT_VERSION as FORMAT_VERSION
from epcache.store._open import create_store as create_store
from epcache.store._open import detect_format as detect_format
from epcache.store._open import open_store as open_store
from epcache.store._poolgrid import cast_tokens as cast_tokens
from epcache.store._poolgrid import check_poolable as check_poolable
from epcache.store._poolgrid import pool_patch_tokens as pool_patch_tokens
from epcache.store._poolgrid import pooled_meta as pooled_meta
from epcache.store._provenance import compute_provenance as compute_provenance
from epcache.store._provenance import provenance_of_document as provenance_of_document
from epcache.store._provenance import split_fingerprint as split_fingerprint
from epcache.store._quant import QUANTIZATIONS as QUANTIZATIONS
from epcache.store._quant import resolve_quantization as resolve_quantization
from epcache.store._sizes import SizeOption as SizeOption
from epcache.store._sizes import format_size_table as format_size_table
from epcache.store._sizes import size_options as size_options
from epcache.store._tokens import TokenSelector as TokenSelector
from epcache.store._tokens import from_torch as from_torch
from epcache.store._tokens import select_tokens as select_tokens
from epcache.store._tokens import to_torch as to_torch
from epcache.store._verify import verify_store as verify_store
from epcache.store._verify_blocks import MarkedBlocks as MarkedBlocks
from epcache.store._verify_blocks import mark_blocks_missing as mark_blocks_missing
from epcache.store._verify_report import BadBlock as BadBlock
from epcache.store._verify_report import BlockProblem as BlockProblem
from epcache.store._verify_report import VerifyReport as VerifyReport

__all__ = [
    "FORMAT_VERSION",
    "MISSING",
    "QUANTIZATIONS",
    "STORE_DTYPES",
    "BackboneMeta",
    "BadBlock",
    "BlockProblem",
    "CacheStats",
    "CatalogEntry",
    "CatalogSplit",
    "ChunkCache",
    "ChunkPlan",
    "FeatureStore",
    "LockInfo",
    "MarkedBlocks",
    "MissingBlock",
    "SizeOption",
    "SplitInfo",
    "SplitMeta",
    "SplitSpec",
    "StoreInfo",
    "StoreLock",
    "StoreLockedError",
    "StoreMeta",
    "TokenLayout",
    "TokenSelector",
    "VerifyReport",
    "acquire_store_lock",
    "block_checksum",
    "cast_tokens",
    "check_for_probe",
    "check_poolable",
    "check_store_integrity",
    "compute_provenance",
    "create_store",
    "describe_store",
    "detect_format",
    "find_stores",
    "format_catalog",
    "format_ranges",
    "format_size_table",
    "format_store_info",
    "from_torch",
    "human_bytes",
    "list_stores",
    "mark_blocks_missing",
    "open_store",
    "plan_chunks",
    "pool_patch_tokens",
    "pooled_meta",
    "provenance_of_document",
    "read_store_lock",
    "resolve_quantization",
    "select_tokens",
    "size_options",
    "split_fingerprint",
    "storage_permutation",
    "to_torch",
    "verify_store",
]
