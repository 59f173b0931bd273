"""The lab's benchmark: one table over many run directories and stores.

``board.csv`` is the single source of truth; ``board.md``, the figures and the EP benchmark's
``results.csv`` rows are generated from it. The key and column definitions every writer and
reader shares live in :mod:`epcache.board.keys`.
"""
