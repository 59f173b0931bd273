"""The read path of a store: token reads, read-ahead, read checks against the records, the chunk cache
of remote stores, and the quantised and pooled parts (cache_layout.md §3.3-3.5)."""
