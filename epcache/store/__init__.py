"""The feature store: the on-disk contract between extraction and probing (cache_layout.md).

This face is what a user of a store needs: open or create one, read it, check it, describe it.
Sibling packages reach the store's parts through the public modules of its subpackages:

- ``layout``: the on-disk format only (metadata documents, chunk plan, crc32c, provenance, codes);
- ``backends``: zarr and HDF5, and the one chunk-read policy shared by their local and remote reads;
- ``read``: the read path (token reads, read-ahead, read checks, chunk cache, decoding);
- ``verify``: `epcache verify` and the integrity checks `epcache probe` runs;
- ``describe``: `epcache info`, `epcache ls`, sizes and how two stores differ;
- ``ops``: the writer lock, the swap of a replaced store and leftover removal.

``core`` holds :class:`FeatureStore` and ``open`` the functions that pick its backend.
"""

from epcache.store.core import FeatureStore as FeatureStore
from epcache.store.describe.catalog import find_stores as find_stores
from epcache.store.describe.catalog import list_stores as list_stores
from epcache.store.describe.info import StoreInfo as StoreInfo
from epcache.store.describe.info import describe_store as describe_store
from epcache.store.layout.meta import BackboneMeta as BackboneMeta
from epcache.store.layout.meta import SplitMeta as SplitMeta
from epcache.store.layout.meta import SplitSpec as SplitSpec
from epcache.store.layout.meta import StoreMeta as StoreMeta
from epcache.store.layout.meta import TokenLayout as TokenLayout
from epcache.store.layout.metadoc import FORMAT_VERSION as FORMAT_VERSION
from epcache.store.layout.provenance import class_map_fingerprint as class_map_fingerprint
from epcache.store.layout.tokens import select_tokens as select_tokens
from epcache.store.open import create_store as create_store
from epcache.store.open import open_store as open_store
from epcache.store.ops.lock import StoreLockedError as StoreLockedError
from epcache.store.read.chunkcache import ChunkCache as ChunkCache
from epcache.store.verify.report import VerifyReport as VerifyReport
from epcache.store.verify.verify import verify_store as verify_store

__all__ = [
    "FORMAT_VERSION",
    "BackboneMeta",
    "ChunkCache",
    "FeatureStore",
    "SplitMeta",
    "SplitSpec",
    "StoreInfo",
    "StoreLockedError",
    "StoreMeta",
    "TokenLayout",
    "VerifyReport",
    "class_map_fingerprint",
    "create_store",
    "describe_store",
    "find_stores",
    "list_stores",
    "open_store",
    "select_tokens",
    "verify_store",
]
