"""Taps: activations inside a pre-norm ViT block, each stored as a nested store (cache_layout.md §2.7).

The store needs the names (``open_store(path, tap=...)``, ``info``, ``verify``) and the extractor needs
the module paths; both read this one registry. A block is ``x = x + ls1(attn(norm1(x)));
x = x + ls2(mlp(norm2(x)))``, and every tap is a ``[B, T, D_tap]`` sequence in the block's token order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from epcache.errors import ConfigError

__all__ = ["BLOCK", "GAP_KEEP", "TAPS", "TAPS_DIR", "Tap", "TapSpec", "parse_taps", "tap_location", "tap_name",
           "tap_record"]

BLOCK = "block"  # the block output: what the main tree of every store holds
TAPS_DIR = "taps"  # <store>/taps/<name>/ is one nested store per tap
GAP_KEEP: tuple[str, ...] = ("cls", "gap", "registers")  # what ``NAME:gap`` keeps, as ``--keep cls,gap,registers``


@dataclass(frozen=True, slots=True)
class Tap:
    """One tap: the module whose forward output is captured, and what that output means."""

    module: str  # path template below the model, ``{layer}`` the block index
    meaning: str


TAPS: dict[str, Tap] = {
    "attn_out": Tap("blocks.{layer}.attn", "attention output, before layer scale and the residual add"),
    "attn_norm": Tap("blocks.{layer}.norm2", "the residual after attention, normalised: the MLP's input"),
    "mlp_hidden": Tap("blocks.{layer}.mlp.act", "MLP hidden activations after the non-linearity (4x wide in ViTs)"),
    "mlp_out": Tap("blocks.{layer}.mlp", "MLP output, before layer scale and the residual add"),
}


@dataclass(frozen=True, slots=True)
class TapSpec:
    """A requested tap: its name and, for ``NAME:gap``, the light layout it is stored in."""

    name: str
    keep: tuple[str, ...] | None = None  # None: every token

    @property
    def module(self) -> str:
        return TAPS[self.name].module

    def text(self) -> str:
        return self.name + (":gap" if self.keep is not None else "")


def parse_taps(text: str | None) -> tuple[TapSpec, ...]:
    """``--taps block,attn_norm,mlp_hidden:gap`` -> the non-block taps, in registry order.

    ``block`` is accepted and dropped: the main tree always holds the block outputs of ``--layers``.

    Raises:
        ConfigError: an unknown tap, a tap named twice, or a suffix other than ``:gap``.
    """
    if text is None or not str(text).strip():
        return ()
    specs: dict[str, TapSpec] = {}
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        name, _, suffix = part.partition(":")
        if name == BLOCK and not suffix:
            continue
        if name == BLOCK:
            raise ConfigError(f"--taps {part!r}: the block outputs follow --keep/--pool-patches; list `block` bare")
        if name not in TAPS:
            raise ConfigError(f"--taps: unknown tap {name!r}; the taps are {BLOCK}, {', '.join(TAPS)}")
        if suffix not in ("", "gap"):
            raise ConfigError(f"--taps {part!r}: the only suffix is ':gap' (keep CLS, registers and the mean patch)")
        if name in specs:
            raise ConfigError(f"--taps names {name!r} twice; give each tap once")
        specs[name] = TapSpec(name, GAP_KEEP if suffix else None)
    return tuple(specs[n] for n in TAPS if n in specs)


def tap_location(location: str, name: str) -> str:
    """Where tap ``name`` of the store at ``location`` lives (a path or a URL)."""
    return f"{location.rstrip('/')}/{TAPS_DIR}/{name}"


def tap_record(spec: TapSpec) -> dict[str, Any]:
    """The tap store's ``tap`` key: inside its provenance, so it never shares the block store's key."""
    return {"name": spec.name, "module": spec.module, "keep": list(spec.keep) if spec.keep is not None else None}


def tap_name(record: Mapping[str, Any] | None) -> str:
    """What a store's tokens are, from its ``tap`` key: the tap's name, or ``block`` for a store without one."""
    return BLOCK if record is None else str(record["name"])
