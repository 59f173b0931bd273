"""Checks and small resolvers of the sweep grid: head specs, token choices, layers, shared settings.

Each check appends a message to the sweep's error list instead of raising, so one ConfigError can
name every problem of a sweep at once (see :func:`epcache.probe.sweep.grid.raise_errors`).
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from epcache._layerspec import resolve_stored_layers
from epcache.errors import ConfigError, HeadSpecError
from epcache.probe.config.inputs import ALF_TOKENS, unknown_tokens_text
from epcache.probe.config.probe_config import _HEAD_RE, ATTENTIVE_TOKENS, HEAD_OPTION_AXES, LINEAR_TOKENS, ProbeConfig
from epcache.probe.data.sources import build_head, head_input, pooled_dim
from epcache.probe.heads import head_options
from epcache.store import StoreMeta

__all__ = ["alf_inputs", "check_axes", "check_choices", "check_head", "check_shared", "check_two_classes",
           "resolve_layers", "split_head", "token_choices"]


def check_shared(blocks: Sequence[ProbeConfig], grid: str) -> None:
    """Settings that define the data pass must be the same in every sub-grid."""
    shared = ("recipe", "epochs", "warmup", "batch_size", "min_steps", "data_seed", "holdout", "shots", "fraction")
    shared += ("repeats",)  # the whole sweep is repeated, never one table of it
    shared += ("dtype", "amp", "compile")
    shared += ("train_split", "eval_split", "eval_store", "tap", "in_memory", "device", "fused")
    for name in shared:
        values = {json.dumps(b.flat()[name]) for b in blocks}
        if len(values) > 1:
            raise ConfigError(
                f"grid file {grid}: {name} differs between [[grid]] tables ({sorted(values)}); it is shared by the "
                "whole sweep (one data pass), so set it at the top level or run separate sweeps"
            )


def check_two_classes(train_labels: np.ndarray, train_rows: np.ndarray, num_classes: int) -> None:
    """Refuse to train or fit on fewer than 2 classes, before any step: every head would score 100%.

    One check for trained heads and solver heads alike, on the rows they would learn from (after
    the holdout and any low-shot selection), so the same store gets the same refusal whichever
    head is asked for.

    Raises:
        ConfigError: fewer than 2 classes listed, or fewer than 2 with samples in ``train_rows``.
    """
    present = len(np.unique(train_labels[train_rows]))
    if num_classes >= 2 and present >= 2:
        return
    in_split = len(np.unique(train_labels[train_labels >= 0]))
    if num_classes >= 2 and in_split >= 2:
        raise ConfigError(
            f"the rows left to train on (after the holdout, the low-shot selection and unwritten blocks) hold "
            f"{present} class(es) of the {in_split} in the train split; probe heads (trained and solver) need at "
            "least 2. Finish the extraction, or lower --holdout / select more rows per class (--shots, --fraction)"
        )
    raise ConfigError(
        f"the train split has {present} class(es) with samples ({num_classes} listed); probe heads (trained and "
        "solver: knn, ridge, logreg, ncm) need at least 2. Extract a split with several classes"
    )


def resolve_layers(entries: Iterable[int | str], meta: StoreMeta) -> list[int]:
    return resolve_stored_layers(entries, meta.layers, meta.backbone.num_blocks,
                                 model=f"the store's backbone {meta.backbone.name}")


def check_choices(name: str, values: Iterable[str], choices: Sequence[str], errors: list[str]) -> None:
    bad = [v for v in values if v not in choices]
    if bad:
        errors.append(f"unknown {name} {bad}; choose from {', '.join(choices)}")


def split_head(text: str) -> tuple[str, dict[str, Any]]:
    """``"ep(queries=8)"`` -> ``("ep", {"queries": 8})``: only the options written out."""
    m = _HEAD_RE.match(text)
    if m is None:
        raise ConfigError(f"cannot parse head {text!r}; expected e.g. 'ep' or 'ep(queries=8,d_out=1)'")
    kind, args = m.group(1), (m.group(2) or "").strip()
    if not args:
        return kind, {}
    try:
        call = ast.parse(f"f({args})", mode="eval").body
        assert isinstance(call, ast.Call)
        if call.args or any(kw.arg is None for kw in call.keywords):
            raise ValueError("options must be given as name=value")
        return kind, {str(kw.arg): ast.literal_eval(kw.value) for kw in call.keywords}
    except (SyntaxError, ValueError) as e:
        raise ConfigError(f"cannot parse head {text!r}: {e}") from None


def check_axes(c: ProbeConfig, entries: Sequence[tuple[str, str, dict[str, Any]]], errors: list[str]) -> None:
    for name in HEAD_OPTION_AXES:
        if getattr(c.heads, name) and entries and not any(name in head_options(kind) for _, kind, _ in entries):
            kinds = ", ".join(sorted({k for _, k, _ in entries}))
            errors.append(f"--{name.replace('_', '-')} was given but none of the heads ({kinds}) takes it")


def token_choices(
    c: ProbeConfig, entries: Sequence[tuple[str, str, dict[str, Any]]], meta: StoreMeta, errors: list[str]
) -> dict[str, list[str]]:
    """Per head kind, the token selections it trains on (the tokens axis filtered by family)."""
    valid = set(LINEAR_TOKENS) | set(ATTENTIVE_TOKENS)
    bad = [t for t in c.inputs.tokens if t not in valid]
    if bad:
        errors.append(unknown_tokens_text(bad))
    if meta.layout.cls_index is None and any("cls" in t for t in c.inputs.tokens):
        errors.append("this store's backbone has no CLS token; use tokens gap (linear) or patch/all (pooling heads)")
    out: dict[str, list[str]] = {}
    for text, kind, explicit in entries:
        family = (LINEAR_TOKENS if kind == "linear" else ("all", "patch") if kind == "mp"
                  else ALF_TOKENS if kind == "alf" else ATTENTIVE_TOKENS)
        if not c.inputs.tokens:
            default = "cls" if meta.layout.cls_index is not None else "gap"
            mp_default = "all" if meta.layout.cls_index is not None else "patch"  # MP: CLS + patches (§1.1)
            out[kind] = ([default] if kind == "linear" else [mp_default] if kind == "mp"
                         else list(ALF_TOKENS) if kind == "alf" else ["patch"])
            continue
        chosen = [t for t in c.inputs.tokens if t in family]
        if not chosen and not (kind == "linear" and "tokens" in explicit):
            errors.append(
                f"head {text!r} cannot read tokens {list(c.inputs.tokens)}: "
                f"{'linear heads read' if kind == 'linear' else f'{kind!r} heads read'} {', '.join(family)}"
            )
        out[kind] = chosen
    if meta.layout.keep is not None:
        light_store_errors(out, meta.layout.keep, errors, tap=None if meta.tap is None else str(meta.tap["name"]))
    return out


def light_store_errors(choices: dict[str, list[str]], keep: Sequence[str], errors: list[str], *,
                       tap: str | None = None) -> None:
    """Name the heads that would read a light store's patch grid, which it averaged into one token.

    Training them would pool or attend over that single token, a different probe under the same name,
    so they are refused before any training with the fix: a store with every token. A tap extracted as
    ``NAME:gap`` is such a store, and its fix is the full tap.
    """
    for kind, tokens in choices.items():
        grid = [t for t in tokens if "patch" in t or t == "all"]
        if grid and tap is not None:
            errors.append(
                f"head {kind!r} reads tokens {', '.join(grid)}, but tap {tap} was extracted pooled (--taps {tap}:gap "
                f"keeps {','.join(keep)}): its patch grid is averaged into one gap token. Re-extract with --taps "
                f"{tap} for every token, or use tokens cls, gap, cls+gap"
            )
        elif grid:
            errors.append(
                f"head {kind!r} reads tokens {', '.join(grid)}, but this is a light store (extract --keep "
                f"{','.join(keep)}): its patch grid is averaged into one gap token. Probe a full store for it "
                "(extract without --keep, or the store it was converted from), or use tokens cls, gap, cls+gap"
            )


def alf_inputs(
    mixes: Sequence[str], layers: Sequence[int], errors: list[str]
) -> list[tuple[int, str, tuple[int, ...]]]:
    """The one input ``alf`` trains on: the ``tokens`` mix of every selected layer (docs/ALF.md).

    ALF fuses layers by construction, so the default mix ``none`` (one config per layer) means the
    ``tokens`` mix for it; ``concat``/``mean`` alone have no ALF reading and are refused.
    """
    if not {"none", "tokens"} & set(mixes):
        errors.append(f"'alf' fuses layers as a token sequence, not layer_mix {list(mixes)}; "
                      "add --layer-mix tokens (the default none also means tokens for alf)")
        return []
    chosen = sorted(set(layers))
    if len(chosen) < 2:
        errors.append(f"'alf' fuses at least 2 layers, got {chosen}; pass --layers all (or last:K, K >= 2)")
        return []
    return [(chosen[-1], "tokens", tuple(chosen))]


def check_head(spec: Any, tokens: str, mix: str, num_layers: int, meta: StoreMeta, num_classes: int) -> str | None:
    """Build the head for its input (token source x layer mix) on the meta device, run one forward.

    ``meta`` is the store's metadata as seen by the layer(s) read (``StoreMeta.for_layer``).
    Returns the error text, or None if it works.
    """
    lay = meta.layout
    try:
        shapes = head_input(spec.kind, tokens, mix, num_layers, dim=meta.dim, num_prefix=lay.num_prefix,
                            cls_index=lay.cls_index, num_registers=lay.num_registers, num_patches=lay.num_patches,
                            pooled_dim=pooled_dim(meta))
        with torch.device("meta"):
            head = build_head(spec, shapes, num_classes)
            x = torch.empty(2, shapes.in_dim) if shapes.vector else torch.empty(2, shapes.num_tokens, shapes.in_dim)
            head(x)
    except HeadSpecError as e:
        return str(e)
    return None


