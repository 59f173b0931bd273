"""Shared pieces of the launcher tests: a tiny extraction (CLI options and config), a 4-layer probe store.

The probe store comes from the probe tests' own needle-store writer (``tests/helpers/probe_helpers``)
so the sweeps here are the ones those tests already check for correctness.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from probe_helpers import write_store
from scale_helpers import CLI_TINY, store_files

from epcache.probe import ProbeConfig

__all__ = ["CLI_TINY", "assert_same_store", "extract_args", "probe_config", "rows_by_id", "write_probe_store"]

LAYERS = (0, 1, 2, 3)  # four layers: a sweep of four units


def extract_args(data: Path, out: Path) -> list[str]:
    """``epcache extract`` options of the tiny CLI ViT (shards of 8 samples are the blocks)."""
    return [*CLI_TINY, "--data", str(data), "--out", str(out), "--allow-duplicate"]


def assert_same_store(got: Path, want: Path) -> None:
    """Every file (chunks, shards, block records, metadata) byte for byte, the writer lock aside."""
    a, b = store_files(got), store_files(want)
    assert sorted(a) == sorted(b)
    different = [name for name in b if a[name] != b[name]]
    assert not different, f"files differ: {different[:5]}"


def write_probe_store(path: Path) -> Path:
    return write_store(path, n_train=96, n_val=32, layers=LAYERS)


def probe_config(store: Path, out: Path | None) -> ProbeConfig:
    """Two heads x two lrs per layer in float64: every row is reproducible bit for bit."""
    return ProbeConfig(store=str(store), head=("linear", "ep"), queries=(2,), lr=(1e-3, 3e-3), layers=("all",),
                       optimizer=("adamw",), epochs=2, warmup=1, batch_size=32, dtype="float64",
                       out=None if out is None else str(out))


def rows_by_id(rows: Any) -> dict[str, dict[str, Any]]:
    """Rows without their wall-clock timings (the only field two runs may differ in)."""
    return {r["id"]: {k: v for k, v in r.items() if k != "timing"} for r in rows}
