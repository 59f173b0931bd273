"""What a sweep leaves behind and how it is read: rows, heads, checkpoints, metrics and the one ranking.

``rows``: the run directory (results.jsonl, safetensors heads, checkpoints) and the summary table.
``ranking``: seed groups and the ranking the summary and the report share. ``metrics``: accuracies
from per-class counts.
"""
