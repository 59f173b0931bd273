"""``--head`` entries that name dense kinds, split off and checked before any work: :func:`plan_dense`.

One ``--head`` list may mix classification and dense heads. The dense registry's kinds
(``names.DENSE_KINDS``, asserted equal to ``DENSE_HEADS``) are the only rule that says which entry is
dense; those entries leave the classification sweep here, once, and become one :class:`DenseSpec`
per (kind, options, layer). Everything a dense head needs from the stores (masks in both splits, a
patch grid, the layers) is checked in this pass, so a refusal happens before a byte is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from epcache._text import plural
from epcache.errors import ConfigError, MissingMasksError
from epcache.probe.config.probe_config import ProbeConfig
from epcache.probe.dense.registry import DENSE_HEADS
from epcache.probe.names import DENSE_KINDS
from epcache.probe.sweep.checks import resolve_layers, split_head
from epcache.store import FeatureStore
from epcache.store.layout.dense import DenseInfo

__all__ = ["VIEW_KINDS", "DensePlan", "DenseSpec", "dense_kind", "plan_dense", "split_dense_heads"]

VIEW_KINDS: tuple[str, ...] = ("hummingbird",)  # memory-bank heads: every stored augmented view joins the bank
_DENSE_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_-]*)\s*(?:\((.*)\))?\s*$", re.DOTALL)


@dataclass(frozen=True)
class DenseSpec:
    """One dense row to produce: a kind with the options written out, on one layer or a mix of layers."""

    kind: str
    head: str  # the --head entry as given
    params: dict[str, Any]  # the options written out (grids as tuples); the registry's defaults fill the rest
    layers: tuple[int, ...]  # one layer, or the layers a mix joins
    mix: str  # "none" (one layer), "concat" (channels side by side) or "mean" (the layers' average)
    views: int  # train views read: 1 (view 0) or every stored view
    id: str
    name: str


@dataclass(frozen=True)
class DensePlan:
    """The dense part of a sweep, and the sweep's config with the dense heads removed."""

    specs: tuple[DenseSpec, ...]
    rest: ProbeConfig | None  # the classification sweep; None: the --head list named dense heads only
    info: DenseInfo
    note: str  # the plan line: heads, layers, images and which views are read


def dense_kind(text: str) -> str | None:
    """The dense kind a ``--head`` entry names, or None for a classification head."""
    m = _DENSE_RE.match(text)
    return m.group(1) if m and m.group(1) in DENSE_KINDS else None


def split_dense_heads(heads: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(classification entries, dense entries)`` in the order given."""
    dense = [h for h in heads if dense_kind(h) is not None]
    return [h for h in heads if dense_kind(h) is None], dense


def plan_dense(config: ProbeConfig, store: FeatureStore, eval_store: FeatureStore) -> DensePlan | None:
    """The dense specs of ``config`` (None without dense heads), every store requirement checked first.

    Raises:
        ConfigError: dense heads with --shard, --repeats or a grid file; an option the kind does not take;
            a store without a patch grid (light or pooled to one token).
        MissingMasksError: the train or eval split holds no masks (the message names the split and the fix).
    """
    rest, dense = split_dense_heads(config.heads.head)
    if not dense:
        return None
    for flag, given in (("--shard", config.run.shard), ("--grid", config.grid),
                        ("--repeats", config.data.repeats > 1)):
        if given:
            raise ConfigError(f"dense heads ({', '.join(dense)}) do not take {flag}: run them in a sweep of their own")
    info = _check_masks(config, store, eval_store)
    layers = resolve_layers(config.inputs.layers, store.meta)
    _check_grid(store, eval_store, layers)
    views = store.split(config.inputs.train_split).views
    inputs = _inputs(config.inputs.layer_mix, layers, store)
    specs = [_spec(text, ly, mix, views, config, store, eval_store) for text in dense for ly, mix in inputs]
    rest_config = dataclasses.replace(config, head=tuple(rest)) if rest else None
    read = ("train view 0 only (the store holds 1 view)" if views == 1 else
            f"train: all {views} views for {', '.join(k for k in VIEW_KINDS if any(s.kind == k for s in specs))}, "
            "view 0 for the others" if any(s.views > 1 for s in specs) else
            f"train view 0 only (of {views} stored views: these heads fit the eval view)")
    n_train = store.split(config.inputs.train_split).num_samples
    n_eval = eval_store.split(config.inputs.eval_split).num_samples
    note = (f"plan: {plural(len(specs), 'dense config')} ({', '.join(sorted({s.kind for s in specs}))}) on "
            f"{plural(len(layers), 'layer')}: patch tokens and masks, train {n_train} / eval {n_eval} images, "
            f"{len(info.classes)} classes; {read}; selection on a 10% holdout of the train images")
    return DensePlan(tuple(specs), rest_config, info, note)


def _check_masks(config: ProbeConfig, store: FeatureStore, eval_store: FeatureStore) -> DenseInfo:
    for st, split in ((store, config.inputs.train_split), (eval_store, config.inputs.eval_split)):
        if not st.has_masks(split) and st.meta.tap is not None:
            raise MissingMasksError(
                f"dense heads need per-pixel masks; {st.location} is tap {st.meta.tap.get('name')!r}, and a store "
                "keeps its masks in the parent (block outputs) only: run the dense heads without --tap")
        if not st.has_masks(split):
            raise MissingMasksError(
                f"dense heads need per-pixel masks, and split {split!r} of {st.location} holds none: extract the "
                "store with `epcache extract --masks ...` (docs/DENSE.md), or drop the dense heads from --head")
    info, eval_info = store.dense_info(), eval_store.dense_info()
    assert info is not None and eval_info is not None
    if (info.classes, info.ignore_index, info.size) != (eval_info.classes, eval_info.ignore_index, eval_info.size):
        raise ConfigError(f"the train and eval stores' masks differ (classes, ignore index or size): "
                          f"{info} vs {eval_info}")
    return info


def _check_grid(store: FeatureStore, eval_store: FeatureStore, layers: Sequence[int]) -> None:
    for st in (store, eval_store):
        if st.meta.layout.keep is not None:
            raise ConfigError(f"{st.location} is a light store (--keep {','.join(st.meta.layout.keep)}): one averaged "
                              "token per image, no patch grid for dense heads; use a full store")
        flat = [ly for ly in layers if (lambda g: g[0] * g[1])(st.meta.for_layer(ly).layout.grid) < 2]
        if flat:
            raise ConfigError(f"{st.location}: layer(s) {flat} hold a 1x1 patch grid, nothing for a dense head to "
                              "label; use a store pooled less (or not at all: --pool-patches 1)")


def _inputs(mixes: Sequence[str], layers: Sequence[int], store: FeatureStore) -> list[tuple[tuple[int, ...], str]]:
    """The layer inputs of ``--layer-mix``: each layer alone for ``none``, all of them at once for a mix.

    Raises:
        ConfigError: ``tokens`` (a dense head labels each patch of one grid, it has no token axis to join), or a
            mix over layers whose patch grids or (for ``mean``) widths differ.
    """
    if "tokens" in mixes:
        raise ConfigError("dense heads take --layer-mix none, concat or mean (a patch's channels from several layers); "
                          "`tokens` joins token axes, which a per-patch head does not have")
    out: list[tuple[tuple[int, ...], str]] = [((ly,), "none") for ly in layers] if "none" in mixes else []
    shapes = {ly: (store.meta.for_layer(ly).layout.grid, store.meta.for_layer(ly).dim) for ly in layers}
    for mix in (m for m in ("concat", "mean") if m in mixes and len(layers) > 1):
        grids, dims = {g for g, _ in shapes.values()}, {d for _, d in shapes.values()}
        if len(grids) > 1 or (mix == "mean" and len(dims) > 1):
            raise ConfigError(f"--layer-mix {mix} joins layers {list(layers)} patch by patch, but their grids or "
                              f"widths differ ({shapes}); choose layers of one shape")
        out.append((tuple(layers), mix))
    return out


def _spec(text: str, layers: tuple[int, ...], mix: str, views: int, config: ProbeConfig, store: FeatureStore,
          eval_store: FeatureStore) -> DenseSpec:
    m = _DENSE_RE.match(text)
    assert m is not None
    kind = m.group(1)
    _, given = split_head(f"x({m.group(2) or ''})")
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
    unknown = sorted(set(params) - set(DENSE_HEADS[kind].defaults))
    if unknown:
        raise ConfigError(f"{text}: {kind} takes {', '.join(DENSE_HEADS[kind].defaults)}; unknown option(s) "
                          f"{', '.join(unknown)}")
    used = views if kind in VIEW_KINDS else 1
    where = {"layer": layers[0]} if mix == "none" else {"layers": list(layers), "mix": mix}  # single-layer ids kept
    key = {"kind": kind, "params": params, **where, "views": used, "store": store.provenance,
           "eval_store": eval_store.provenance, "train": config.inputs.train_split, "eval": config.inputs.eval_split}
    ident = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    opts = ",".join(f"{k}={v}" for k, v in sorted(params.items()))
    label = f"L{layers[0]}" if mix == "none" else f"L{'+'.join(map(str, layers))} {mix}"
    name = f"{kind}{f'({opts})' if opts else ''} {label}"
    return DenseSpec(kind, text, params, layers, mix, used, ident, name)
