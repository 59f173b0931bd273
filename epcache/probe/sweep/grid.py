"""The sweep: a request resolved against a store into settings shared by all configs and the runs.

A sweep is the cartesian product of the list-valued options of a :class:`ProbeConfig` (head x
head options x layer x tokens x optimizer x lr x wd x seed), or the union of such products
from a TOML grid file. :func:`resolve_request` applies the grid file's top-level keys to the
config ONCE; the data path, the protocol and every results row read that resolved config, so a
row can never describe a batch size or holdout that did not run. Every :class:`RunSpec` has a
canonical, readable ``name`` and a stable ``id`` (a hash of every setting that changes its
numbers, the store's provenance and the resolved protocol included), so the same config run alone
or inside any sweep has the same id and can be skipped when a run directory already holds it.

Everything that can be wrong with a sweep is collected and raised as ONE ``ConfigError``
before any training starts: a sweep of 300 configs should not die at config 217.
"""

from __future__ import annotations

import dataclasses
import itertools
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from epcache._docs import leaf_fields
from epcache.errors import ConfigError, HeadSpecError
from epcache.probe.config.fields import raise_errors
from epcache.probe.config.probe_config import (
    DTYPES,
    HEAD_OPTION_AXES,
    LINEAR_TOKENS,
    OPTIMIZER_NAMES,
    ProbeConfig,
    check_config_values,
)
from epcache.probe.config.protocol import Protocol, resolve_holdout, resolve_protocol
from epcache.probe.config.recipes import get_recipe
from epcache.probe.config.runspec import RunSpec, SweepSettings
from epcache.probe.data.sources import layer_inputs
from epcache.probe.device import resolve_amp, resolve_device
from epcache.probe.heads import HeadSpec, head_options, list_heads, list_solvers
from epcache.probe.names import unknown_head_text
from epcache.probe.sweep.checks import (
    alf_inputs,
    check_axes,
    check_choices,
    check_head,
    check_shared,
    resolve_layers,
    split_head,
    token_choices,
)
from epcache.store import StoreMeta

__all__ = ["RunSpec", "SweepRequest", "SweepSettings", "expand_sweep", "load_grid", "raise_errors", "resolve_request",
           "sweep_layers"]

_GRID_FORBIDDEN = frozenset({"grid", "store", "out", "shard", "protocol"})  # per-invocation, never per sweep file


@dataclass(frozen=True)
class SweepRequest:
    """A config with its grid file applied once: the merged base and its sub-grids."""

    config: ProbeConfig  # the CLI/library config with the grid file's top-level keys applied
    blocks: tuple[ProbeConfig, ...]  # one per [[grid]] table (or just ``config``)


def resolve_request(config: ProbeConfig) -> SweepRequest:
    """Apply the grid file (if any) to ``config``: the single resolution every later step reads.

    Raises:
        ConfigError: unreadable grid file, keys it may not set, or shared settings that differ
            between its ``[[grid]]`` tables.
    """
    if config.grid is None:
        return SweepRequest(config, (config,))
    top, tables = load_grid(config.grid)
    try:
        base = dataclasses.replace(config, **top)
        blocks = [dataclasses.replace(base, **t) for t in tables] if tables else [base]
    except (TypeError, ValueError) as e:
        raise ConfigError(f"grid file {config.grid}: {e}") from None
    check_shared(blocks, config.grid)
    return SweepRequest(base, tuple(blocks))


def sweep_layers(request: SweepRequest, meta: StoreMeta) -> list[int]:
    """Every layer the sweep reads, in first-requested order.

    Raises:
        UnknownLayerError: a requested layer is not in the store.
    """
    out: list[int] = []
    for block in request.blocks:
        out.extend(resolve_layers(block.inputs.layers, meta))
    return list(dict.fromkeys(out))


def load_grid(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read a TOML sweep file: top-level keys and the ``[[grid]]`` tables.

    Top-level keys override :class:`ProbeConfig` fields for the whole sweep; each ``[[grid]]``
    table overrides them again for one sub-grid, and the sweep is the union of the sub-grids'
    products (a file without ``[[grid]]`` is a single grid). Keys are ProbeConfig field names
    (``batch_size``, not ``--batch-size``); ``store``, ``out``, ``grid`` and ``shard`` belong to
    the command line and are refused::

        recipe = "auto"
        epochs = 20
        batch_size = 256
        [[grid]]
        head = "linear"
        tokens = ["cls", "gap"]
        lr = [1e-3, 3e-3]
        [[grid]]
        head = "ep"
        queries = [8, 16]

    Every table's values go through :func:`~epcache.probe.config.probe_config.check_config_values`, the
    check ``ProbeConfig(...)`` and the command line use, so ``lr = nan`` or ``epochs = true`` is
    refused here, naming the file, the table and the key, exactly as ``--lr nan`` is refused.

    Raises:
        ConfigError: unreadable TOML, unknown or forbidden keys, values of the wrong type or out of range.
    """
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"grid file {p} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"grid file {p} is not valid TOML: {e}") from None
    blocks = doc.pop("grid", [])
    if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
        raise ConfigError(f"grid file {p}: 'grid' must be an array of tables ([[grid]])")
    fields = {f.name for f in leaf_fields(ProbeConfig)}
    allowed = fields - _GRID_FORBIDDEN
    checked: list[dict[str, Any]] = []
    for where, table in [("top level", doc), *((f"[[grid]] #{i + 1}", b) for i, b in enumerate(blocks))]:
        forbidden = sorted(set(table) & _GRID_FORBIDDEN)
        if forbidden:
            raise ConfigError(
                f"grid file {p}, {where}: {forbidden} cannot be set in a grid file; pass them on the command line "
                "(--store, --out, --shard, --protocol)"
            )
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise ConfigError(f"grid file {p}, {where}: unknown key(s) {unknown}; accepted: {sorted(allowed)}")
        try:
            checked.append(check_config_values(table))
        except ConfigError as e:
            raise ConfigError(f"grid file {p}, {where}: {e}") from None
    return checked[0], checked[1:]


def make_settings(
    request: SweepRequest, protocol: Protocol, *, store_provenance: str, eval_provenance: str, holdout: float,
    errors: list[str], selection: str = "holdout",
) -> SweepSettings:
    """The sweep-wide settings of a resolved request (shared-setting checks append to ``errors``)."""
    c = request.config
    if c.data.shots is not None and c.data.fraction is not None:
        errors.append("give --shots or --fraction, not both")
    if c.run.dtype not in DTYPES:
        errors.append(f"dtype must be one of {DTYPES}, got {c.run.dtype!r}")
    if not c.optim.seeds:
        errors.append("seeds is empty")
    amp, amp_rule = _resolve_amp(c, errors)
    return SweepSettings(
        protocol=protocol,
        data_seed=c.data.data_seed,
        holdout=float(holdout),
        shots=c.data.shots,
        fraction=None if c.data.fraction is None else float(c.data.fraction),
        dtype=c.run.dtype,
        train_split=c.inputs.train_split,
        eval_split=c.inputs.eval_split,
        store_provenance=store_provenance,
        eval_provenance=eval_provenance,
        amp=amp,
        amp_rule=amp_rule,
        refit=bool(c.data.refit) and (holdout > 0 or selection.startswith("cv")),
        selection=selection,
        suite=c.data.protocol,
    )


def _resolve_amp(c: ProbeConfig, errors: list[str]) -> tuple[str, str]:
    """The sweep's autocast on its device (``auto``: bf16 on CUDA)."""
    try:
        device = resolve_device(c.run.device)
    except ConfigError as e:
        errors.append(str(e))
        return "none", "invalid"
    return resolve_amp(c.run.amp, device, c.run.dtype, errors)


def expand_sweep(
    config: ProbeConfig | SweepRequest,
    meta: StoreMeta,
    *,
    num_classes: int,
    store_provenance: str,
    eval_provenance: str,
    n_train: int | None = None,
    errors: list[str] | None = None,
    selection: str = "holdout",
) -> list[RunSpec]:
    """Resolve a config (and its grid file) against a store into the list of runs.

    Args:
        config: the request (a ProbeConfig, or one already resolved with :func:`resolve_request`).
        meta: metadata of the train store (layers, width, token layout).
        num_classes: classes of the train split.
        store_provenance: provenance key of the train store (enters every id).
        eval_provenance: provenance key of the store holding the eval split.
        n_train: training samples after holdout and low-shot selection (the recipe adapts batch
            and length to it); None expands without a dataset (no adaptation).
        errors: collect problems here instead of raising (the caller raises them all at once).
        selection: the plan's resolved selection rule; cvK and none train without a holdout.

    Returns:
        The runs, in sweep order, without duplicates.

    Raises:
        ConfigError: every invalid setting and config of the sweep, in one message (unless ``errors``).
        UnknownLayerError: a requested layer is not in the store.
    """
    request = config if isinstance(config, SweepRequest) else resolve_request(config)
    own_errors = errors is None
    errors = [] if errors is None else errors
    try:
        recipe = get_recipe(request.config.optim.recipe)
    except ConfigError as e:
        errors.append(str(e))
        recipe = get_recipe("auto")
    holdout = resolve_holdout(request.config.data.holdout, recipe, errors) if selection == "holdout" else 0.0
    base = resolve_protocol(request.config, recipe, n_train=n_train, errors=errors)
    settings = make_settings(request, base, store_provenance=store_provenance, eval_provenance=eval_provenance,
                             holdout=holdout, errors=errors, selection=selection)
    runs: dict[str, RunSpec] = {}
    checked: dict[tuple[str, str, str, int, int, int], str | None] = {}
    known = set(list_heads())
    for block in request.blocks:
        layers = resolve_layers(block.inputs.layers, meta)
        # a table's own lr/blr/wd choices are checked as the base's are (the messages are deduplicated)
        grid = resolve_protocol(block, recipe, n_train=n_train, errors=errors) if block is not request.config else base
        check_choices("optimizer", grid.optimizers, OPTIMIZER_NAMES, errors)
        inputs = layer_inputs(block.inputs.layer_mix, layers, errors)  # (layer, mix, mix_layers) per input
        entries = []
        for text in block.heads.head:
            try:
                kind, explicit = split_head(text)
            except ConfigError as e:
                errors.append(str(e))
                continue
            if kind not in known:
                errors.append(unknown_head_text(kind, text, list_heads(), list_solvers()))
                continue
            entries.append((text, kind, explicit))
        check_axes(block, entries, errors)
        choices = token_choices(block, entries, meta, errors)
        alf_input = alf_inputs(block.inputs.layer_mix, layers, errors) if any(k == "alf" for _, k, _ in entries) else []
        for text, kind, explicit in entries:
            accepted = head_options(kind)
            axes = [
                [(name, v) for v in getattr(block.heads, name)]
                for name in HEAD_OPTION_AXES
                if getattr(block.heads, name) and name in accepted and name not in explicit
            ]
            for opts in itertools.product(*axes):
                options = {**explicit, **dict(opts)}
                toks = [explicit["tokens"]] if kind == "linear" and "tokens" in explicit else choices[kind]
                for tokens in toks:
                    if kind == "linear":
                        options = {**options, "tokens": tokens}
                    try:
                        spec = HeadSpec.of(kind, **options)
                    except HeadSpecError as e:
                        errors.append(f"{text}: {e}")
                        break
                    if kind == "linear" and tokens not in LINEAR_TOKENS:
                        errors.append(f"{text}: linear heads read {', '.join(LINEAR_TOKENS)}, not tokens={tokens!r}")
                        continue
                    kind_inputs = alf_input if kind == "alf" else inputs  # alf: every layer's CLS and GAP at once
                    for layer, mix, mix_layers in [(-1, "none", ())] if tokens == "pooled" else kind_inputs:
                        if mix == "tokens" and kind in ("linear", "mp"):  # the mix axis skips heads it cannot feed
                            continue
                        lm = meta.for_layer(layer) if layer >= 0 else meta  # a layer's own grid and width
                        if len({(meta.for_layer(x).dim, meta.for_layer(x).num_tokens) for x in mix_layers}) > 1:
                            errors.append(f"layer_mix {mix}: layers {list(mix_layers)} differ in grid or width; "
                                          "mix layers of one shape")
                            continue
                        key = (spec.name, tokens, mix, len(mix_layers), lm.dim, lm.num_tokens)
                        if key not in checked:
                            checked[key] = check_head(spec, tokens, mix, len(mix_layers), lm, num_classes)
                        if checked[key] is not None:
                            mixed = "" if mix == "none" else f" layer_mix={mix}"
                            errors.append(f"{spec.name} tokens={tokens}{mixed}: {checked[key]}")
                            continue
                        for optimizer, (lr, blr), wd, seed in itertools.product(
                            grid.optimizers, grid.lrs, grid.wd, block.optim.seeds
                        ):
                            run = RunSpec(spec, layer, tokens, optimizer, lr, blr, wd, seed, settings, mix, mix_layers)
                            runs.setdefault(run.id, run)
    if own_errors:
        raise_errors(errors)
        if not runs:
            raise ConfigError("the sweep is empty: no head/layer/lr combination was requested")
    return list(runs.values())
