"""Operations around a store's files: the writer lock (cache_layout.md §4.3), the swap of a replaced store,
leftover partial files."""
