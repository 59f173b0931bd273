"""The torch-free vocabulary of a head's input: token sources, layer mixes, compute dtypes.

The request (``ProbeConfig``), the runs (``RunSpec``) and the data path all name inputs with
these words; they live at the bottom so a config can be read, checked and hashed without torch
or the data path.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ALF_TOKENS",
    "DTYPES",
    "LAYER_MIXES",
    "POOLED_GROUP",
    "SEQUENCE_SOURCES",
    "VECTOR_SOURCES",
    "input_key",
    "jsonable",
    "read_layers",
    "unknown_tokens_text",
]

VECTOR_SOURCES: tuple[str, ...] = ("cls", "gap", "cls+gap", "pooled")  # what a linear head can read
SEQUENCE_SOURCES: tuple[str, ...] = ("patch", "all", "registers", "patch+registers")  # attentive heads, MP
ALF_TOKENS: tuple[str, ...] = ("cls+gap",)  # alf: each layer's CLS and GAP, read as two tokens per layer
LAYER_MIXES: tuple[str, ...] = ("none", "concat", "mean", "tokens")
DTYPES: tuple[str, ...] = ("float32", "float64")  # compute dtypes of a sweep (the heads' master weights)
POOLED_GROUP = "pooled"  # the group of configs reading the store's pooled output (no layer)


def input_key(tokens: str, layer_mix: str) -> str:
    """The derivation a stack's input goes through: the source, prefixed by the mix (``mean:patch``)."""
    return tokens if layer_mix == "none" else f"{layer_mix}:{tokens}"


def read_layers(run: Any) -> tuple[int, ...]:
    """The stored layers a config reads: its mix's layers, its one layer, or none (``pooled``)."""
    if run.tokens == "pooled":
        return ()
    return tuple(run.mix_layers) if run.layer_mix != "none" else (run.layer,)


def jsonable(v: Any) -> Any:
    """A head option as JSON (tuples as lists), for ids and rows."""
    return list(v) if isinstance(v, tuple) else v


def unknown_tokens_text(bad: list[str]) -> str:
    """The sweep's problem line for ``--tokens`` values no head reads (also said before torch loads)."""
    return (f"unknown tokens {bad}; linear heads read {', '.join(VECTOR_SOURCES)}, "
            f"pooling heads read {', '.join(SEQUENCE_SOURCES)}")
