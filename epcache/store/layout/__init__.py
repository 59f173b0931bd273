"""The on-disk format of a feature store, and nothing else: cache_layout.md in code.

Metadata documents (``metadoc``: §2, ``meta``: §2.1-2.2), provenance keys (``provenance``: §2.3),
the pooled patch grid (``poolgrid``: §2.4), chunks, blocks, stored order and the ids mirror
(``chunking``: §3.1-3.2), records (``crc``: §3.3), quantisation codes (``quant``: §3.5) and the token
layout selectors read from (``tokens``). Nothing here imports the rest of the store.
"""
