"""Sweep configuration: the user's request (``ProbeConfig``), one run (``RunSpec``), and the grid.

A sweep is the cartesian product of the list-valued options of a :class:`ProbeConfig` (head x
head options x layer x tokens x optimizer x lr x wd x seed), or the union of such products
from a TOML grid file. Every resulting :class:`RunSpec` has a canonical, readable ``name`` and
a stable ``id`` (a hash of every setting that changes its numbers, the store's provenance
included), so the same config run alone or inside any sweep has the same id and can be skipped
when a run directory already holds its result.

Everything that can be wrong with a sweep is collected and raised as ONE ``ConfigError``
before any training starts: a sweep of 300 configs should not die at config 217.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import itertools
import json
import re
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from epcache.errors import ConfigError, HeadSpecError, UnknownLayerError
from epcache.store import StoreMeta

__all__ = [
    "ATTENTIVE_TOKENS",
    "DTYPES",
    "HEAD_OPTION_AXES",
    "LINEAR_TOKENS",
    "ProbeConfig",
    "RunSpec",
    "SweepSettings",
    "expand_sweep",
    "load_grid",
    "parse_heads",
    "parse_layers",
    "parse_list",
]

LINEAR_TOKENS: tuple[str, ...] = ("cls", "gap", "cls+gap", "pooled")  # what a linear head can read (issue 15)
ATTENTIVE_TOKENS: tuple[str, ...] = ("patch", "all", "registers", "patch+registers")  # pooling heads, MP
HEAD_OPTION_AXES: tuple[str, ...] = ("queries", "d_out", "num_heads")  # ProbeConfig axes that are head options
DTYPES: tuple[str, ...] = ("float32", "float64")
OPTIMIZER_NAMES: tuple[str, ...] = ("lars", "adamw", "sgd")
_TUPLE_FIELDS: dict[str, type] = {
    "head": str,
    "queries": int,
    "d_out": int,
    "num_heads": int,
    "layers": object,
    "tokens": str,
    "layer_mix": str,
    "lr": float,
    "blr": float,
    "wd": float,
    "optimizer": str,
    "seeds": int,
}
_HEAD_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*$", re.DOTALL)


@dataclass(frozen=True)
class ProbeConfig:
    """Everything ``epcache probe`` takes; list-valued fields are sweep axes (their product is the sweep).

    Fields map 1:1 to CLI options (``--d-out`` -> ``d_out``). Tuple fields accept a scalar or a
    list in Python; the CLI passes comma strings through :func:`parse_list` / :func:`parse_heads`
    / :func:`parse_layers`. Head-option axes (``queries``, ``d_out``, ``num_heads``) multiply
    only the heads that take that option, so ``head=("linear", "ep"), queries=(4, 8)`` gives one
    linear and two EP heads per remaining combination; the same holds for ``tokens`` (linear
    heads take the cls/gap values, pooling heads the patch/all values).
    """

    store: str  # feature store path or URL (the train split, and the eval split unless eval_store)
    head: tuple[str, ...] = ("ep",)  # head kinds or specs, e.g. "ep", "linear(tokens='gap')"
    queries: tuple[int, ...] = ()  # EP queries M; empty: the head's default (32)
    d_out: tuple[int, ...] = ()  # EP width divisor; empty: default (1)
    num_heads: tuple[int, ...] = ()  # attention heads of MHCA-style poolers; empty: each kind's default
    layers: tuple[int | str, ...] = ("last",)  # absolute block indices, "last" or "all"
    tokens: tuple[str, ...] = ()  # empty: linear reads cls, pooling heads read patch, mp reads all
    layer_mix: tuple[str, ...] = ("none",)  # none: one config per layer; concat|mean|tokens: all layers as one input
    lr: tuple[float, ...] = ()  # absolute peak lr; when empty lr = blr * batch_size / 256
    blr: tuple[float, ...] = (0.1,)  # base lr (EP_SPEC §4.1); ignored when lr is given
    wd: tuple[float, ...] = (0.0,)  # weight decay (LARS: only on >=2-D params, as MAE)
    optimizer: tuple[str, ...] = ("lars",)  # lars | adamw | sgd
    seeds: tuple[int, ...] = (0,)  # head-init seeds; data order depends on data_seed only
    epochs: int = 90
    warmup: int = 10  # warm-up epochs (linear from 0, per iteration)
    batch_size: int = 4096  # per step; drop_last for training
    data_seed: int = 0  # holdout split, low-shot subset, batch order and view choice
    holdout: float = 0.1  # stratified fraction of train used to select epoch and config; 0: last epoch
    shots: int | None = None  # low-shot: K training samples per class (after the holdout is removed)
    fraction: float | None = None  # low-shot: this fraction of each class's training samples
    train_split: str = "train"
    eval_split: str = "val"
    eval_store: str | None = None  # another store holding eval_split (same backbone provenance required)
    grid: str | None = None  # TOML sweep file; its keys override these fields (see load_grid)
    out: str | None = None  # run directory; None: nothing is written (no resume)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    in_memory: bool = False  # load the selected tokens of every split once instead of streaming
    allow_incomplete: bool = False  # train on the written blocks of an incomplete store
    dtype: str = "float32"  # compute dtype; float64 is for exactness tests
    fused: bool = True  # stack same-shape heads into batched ops; False: one module per config (reference)
    save_heads: bool = True  # write heads/<id>.safetensors for every config's selected epoch
    prefetch: int = 4  # batches the reader thread may run ahead
    shuffle_chunks: int = 0  # chunks in the shuffle buffer; 0: enough for two batches (at least 4)
    eval_cache_mb: float = 4096.0  # holdout/eval tokens up to this size are read once and kept in RAM
    shard: str | None = None  # "I/N": train only part I of N of the sweep (job arrays); torchrun sets it from RANK

    def __post_init__(self) -> None:
        for name, kind in _TUPLE_FIELDS.items():
            object.__setattr__(self, name, _as_tuple(getattr(self, name), kind, name))
        for name in ("store", "eval_store", "grid", "out"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, str(value))

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclass(frozen=True, slots=True)
class SweepSettings:
    """Settings shared by every config of one sweep; part of each config's id."""

    epochs: int
    warmup: int
    batch_size: int
    data_seed: int
    holdout: float
    shots: int | None
    fraction: float | None
    dtype: str
    train_split: str
    eval_split: str
    store_provenance: str  # provenance key of the train store
    eval_provenance: str  # provenance key of the store holding eval_split

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class RunSpec:
    """One probe configuration of a sweep: a head, its input and its optimisation.

    ``seed`` only seeds the head's initial weights (drawn by ``create_head`` under
    ``torch.manual_seed(seed)``); the batch order depends on ``settings.data_seed`` alone, so a
    config trained alone and trained inside any sweep sees the same batches and gives the same
    weights.
    """

    head: Any  # HeadSpec (typed loosely so this module imports without torch)
    layer: int  # the layer read; for a layer mix its last layer; -1 for tokens=pooled (no layer)
    tokens: str  # token source, epcache.probe.data.sources (cls, gap, cls+gap, pooled / patch, all, registers ...)
    optimizer: str
    lr: float  # absolute peak learning rate
    blr: float | None  # base lr it came from (lr = blr * batch / 256); None when lr was given directly
    wd: float
    seed: int
    settings: SweepSettings
    layer_mix: str = "none"  # none | concat | mean | tokens (issue 15)
    mix_layers: tuple[int, ...] = ()  # the layers a mix reads, ascending (empty for none)
    id: str = field(init=False)
    name: str = field(init=False)

    def __post_init__(self) -> None:
        where = f"layer={self.layer}"
        if self.layer_mix != "none":
            where = f"layers={','.join(map(str, self.mix_layers))} mix={self.layer_mix}"
        elif self.tokens == "pooled":
            where = "layer=pooled"
        name = f"{self.head.name} {where} tokens={self.tokens} lr={self.lr:.6g} wd={self.wd:g}"
        if self.optimizer != "lars":
            name += f" optimizer={self.optimizer}"
        object.__setattr__(self, "name", f"{name} seed={self.seed}")
        doc = {**self.hyperparameters(), "settings": self.settings.to_json()}
        digest = hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        object.__setattr__(self, "id", digest[:16])

    @property
    def group_key(self) -> tuple[int, ...]:
        """Configs with the same key read the same layers and train in one pass (``()``: pooled output)."""
        from epcache.probe.data.layers import read_layers

        return read_layers(self)

    @property
    def input_key(self) -> str:
        """How the head's input is derived from the group's batch: ``patch``, ``mean:patch`` ..."""
        from epcache.probe.data.sources import input_key

        return input_key(self.tokens, self.layer_mix)

    @property
    def stack_key(self) -> tuple[str, str, str]:
        """Configs with the same key have the same parameter shapes and are stacked."""
        return (self.head.name, self.input_key, self.optimizer)

    @property
    def seedless_name(self) -> str:
        """The name without the seed: configs that differ only by seed share it (mean/std)."""
        return self.name.rsplit(" seed=", 1)[0]

    def hyperparameters(self) -> dict[str, Any]:
        """This config's own settings as JSON."""
        doc = {
            "head": self.head.name,
            "kind": self.head.kind,
            "head_options": {k: _jsonable(v) for k, v in self.head.params},
            "layer": self.layer,
            "tokens": self.tokens,
            "optimizer": self.optimizer,
            "lr": self.lr,
            "blr": self.blr,
            "wd": self.wd,
            "seed": self.seed,
        }
        if self.layer_mix != "none":  # only then: ids of single-layer configs stay what they were
            doc |= {"layer_mix": self.layer_mix, "layers": list(self.mix_layers)}
        return doc


def parse_list(text: str | Sequence[Any] | None, kind: Callable[[str], Any] = str) -> tuple[Any, ...]:
    """``"1e-3,3e-3"`` -> ``(0.001, 0.003)``: comma lists from the CLI (a list passes through).

    Raises:
        ConfigError: an element does not convert.
    """
    if text is None:
        return ()
    if not isinstance(text, str):
        return tuple(kind(x) if isinstance(x, str) else x for x in text)
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(kind(part))
        except ValueError:
            name = getattr(kind, "__name__", str(kind))
            raise ConfigError(f"cannot read {part!r} in {text!r} as {name}") from None
    return tuple(out)


def parse_heads(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"linear,ep(queries=8,d_out=2)"`` -> ``("linear", "ep(queries=8,d_out=2)")``.

    Splits at commas outside parentheses, so head specs keep their own option lists.

    Raises:
        ConfigError: unbalanced parentheses.
    """
    if not isinstance(text, str):
        return tuple(text)
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
            continue
        depth += ch == "("
        depth -= ch == ")"
        if depth < 0:
            raise ConfigError(f"unbalanced ')' in head list {text!r}")
        cur.append(ch)
    if depth:
        raise ConfigError(f"unbalanced '(' in head list {text!r}")
    parts.append("".join(cur).strip())
    return tuple(p for p in parts if p)


def parse_layers(text: str | Sequence[int | str]) -> tuple[int | str, ...]:
    """``"all"``, ``"last"``, ``"last:4"``, ``"11"`` or ``"9,10,11"`` -> layer entries resolved against the store.

    ``last:K`` (also ``lastk:K``) is the last K stored layers.

    Raises:
        ConfigError: an entry is neither an integer nor ``all``/``last``/``last:K``.
    """
    items = parse_list(text, str) if isinstance(text, str) else tuple(text)
    out: list[int | str] = []
    for item in items:
        if isinstance(item, int) or item in ("all", "last"):
            out.append(item)
            continue
        m = re.fullmatch(r"last(?:k)?:(\d+)", str(item).strip())
        if m and int(m.group(1)) >= 1:
            out.append(f"last:{int(m.group(1))}")
            continue
        try:
            out.append(int(item))
        except ValueError:
            raise ConfigError(f"layer {item!r} is not a block index, 'last', 'last:K' or 'all'") from None
    return tuple(out)


def load_grid(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read a TOML sweep file: top-level keys and the ``[[grid]]`` tables.

    Top-level keys override :class:`ProbeConfig` fields for the whole sweep; each ``[[grid]]``
    table overrides them again for one sub-grid, and the sweep is the union of the sub-grids'
    products (a file without ``[[grid]]`` is a single grid)::

        epochs = 20
        batch_size = 256
        [[grid]]
        head = "linear"
        tokens = ["cls", "gap"]
        lr = [1e-3, 3e-3]
        [[grid]]
        head = "ep"
        queries = [8, 16]

    Raises:
        ConfigError: unreadable TOML, unknown keys or values of the wrong type.
    """
    p = Path(path)
    try:
        doc = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"grid file {p} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"grid file {p} is not valid TOML: {e}") from None
    blocks = doc.pop("grid", [])
    if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
        raise ConfigError(f"grid file {p}: 'grid' must be an array of tables ([[grid]])")
    allowed = {f.name for f in dataclasses.fields(ProbeConfig)} - {"grid", "store", "out"}
    for where, table in [("top level", doc), *((f"[[grid]] #{i + 1}", b) for i, b in enumerate(blocks))]:
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise ConfigError(f"grid file {p}, {where}: unknown key(s) {unknown}; accepted: {sorted(allowed)}")
    return doc, list(blocks)


def expand_sweep(
    config: ProbeConfig,
    meta: StoreMeta,
    *,
    num_classes: int,
    store_provenance: str,
    eval_provenance: str,
) -> list[RunSpec]:
    """Resolve a config (and its grid file) against a store into the list of runs.

    Args:
        config: the request.
        meta: metadata of the train store (layers, width, token layout).
        num_classes: classes of the train split.
        store_provenance: provenance key of the train store (enters every id).
        eval_provenance: provenance key of the store holding the eval split.

    Returns:
        The runs, in sweep order, without duplicates.

    Raises:
        ConfigError: every invalid setting and config of the sweep, in one message.
        UnknownLayerError: a requested layer is not in the store.
    """
    from epcache.probe.data.sources import layer_inputs
    from epcache.probe.heads import HeadSpec, head_options, list_heads

    blocks = [config]
    if config.grid is not None:
        top, tables = load_grid(config.grid)
        try:
            base = dataclasses.replace(config, **top)
            blocks = [dataclasses.replace(base, **t) for t in tables] if tables else [base]
        except (TypeError, ValueError) as e:
            raise ConfigError(f"grid file {config.grid}: {e}") from None
        _check_shared(blocks, config.grid)
    errors: list[str] = []
    settings = _settings(blocks[0], store_provenance, eval_provenance, errors)
    runs: dict[str, RunSpec] = {}
    checked: dict[tuple[str, str], str | None] = {}
    known = set(list_heads())
    for block in blocks:
        layers = _resolve_layers(block.layers, meta)
        lrs = _learning_rates(block, errors)
        _check_choices("optimizer", block.optimizer, OPTIMIZER_NAMES, errors)
        inputs = layer_inputs(block.layer_mix, layers, errors)  # (layer, mix, mix_layers) per input
        _check_positive("wd", block.wd, errors, allow_zero=True)
        entries = []
        for text in block.head:
            try:
                kind, explicit = _split_head(text)
            except ConfigError as e:
                errors.append(str(e))
                continue
            if kind not in known:
                errors.append(f"unknown head kind {kind!r} in {text!r}; registered kinds: {', '.join(sorted(known))}")
                continue
            entries.append((text, kind, explicit))
        _check_axes(block, entries, errors)
        token_choices = _token_choices(block, entries, meta, errors)
        for text, kind, explicit in entries:
            accepted = head_options(kind)
            axes = [
                [(name, v) for v in getattr(block, name)]
                for name in HEAD_OPTION_AXES
                if getattr(block, name) and name in accepted and name not in explicit
            ]
            for opts in itertools.product(*axes):
                options = {**explicit, **dict(opts)}
                toks = [explicit["tokens"]] if kind == "linear" and "tokens" in explicit else token_choices[kind]
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
                    for layer, mix, mix_layers in [(-1, "none", ())] if tokens == "pooled" else inputs:
                        if mix == "tokens" and kind in ("linear", "mp"):  # the mix axis skips heads it cannot feed
                            continue
                        key = (spec.name, tokens, mix, len(mix_layers))
                        if key not in checked:
                            checked[key] = _check_head(spec, tokens, mix, len(mix_layers), meta, num_classes)
                        if checked[key] is not None:
                            mixed = "" if mix == "none" else f" layer_mix={mix}"
                            errors.append(f"{spec.name} tokens={tokens}{mixed}: {checked[key]}")
                            continue
                        for optimizer, (lr, blr), wd, seed in itertools.product(
                            block.optimizer, lrs, block.wd, block.seeds
                        ):
                            run = RunSpec(spec, layer, tokens, optimizer, lr, blr, wd, seed, settings, mix, mix_layers)
                            runs.setdefault(run.id, run)
    if errors:
        unique = list(dict.fromkeys(errors))
        raise ConfigError(f"{len(unique)} problem(s) in the sweep, nothing was trained:\n  - " + "\n  - ".join(unique))
    if not runs:
        raise ConfigError("the sweep is empty: no head/layer/lr combination was requested")
    return list(runs.values())


# ---------------------------------------------------------------------------------------------- helpers


def _as_tuple(value: Any, kind: type, name: str) -> tuple[Any, ...]:
    """Normalise a list-valued field: scalars, lists and comma strings all become tuples."""
    if value is None:
        return ()
    if isinstance(value, str):
        if name == "head":
            return parse_heads(value)
        if name == "layers":
            return parse_layers(value)
        value = parse_list(value, str)
    elif not isinstance(value, Iterable):
        value = (value,)
    if name == "layers":
        return parse_layers(tuple(value))
    out = []
    for x in value:
        if isinstance(x, bool):
            raise ConfigError(f"{name}: {x!r} is not a {kind.__name__}")
        if isinstance(x, str):
            if kind is str:
                out.append(x.strip())
                continue
            try:
                x = kind(x.strip())
            except ValueError:
                raise ConfigError(f"{name}: cannot read {x!r} as {kind.__name__}") from None
        if kind is float and isinstance(x, int | float):
            out.append(float(x))
        elif kind is int and isinstance(x, int):
            out.append(x)
        elif kind is int and isinstance(x, float) and x.is_integer():
            out.append(int(x))
        else:
            raise ConfigError(f"{name}: {x!r} is not a {kind.__name__}")
    return tuple(out)


def _check_shared(blocks: Sequence[ProbeConfig], grid: str) -> None:
    """Settings that define the data pass must be the same in every sub-grid."""
    shared = ("epochs", "warmup", "batch_size", "data_seed", "holdout", "shots", "fraction", "dtype")
    shared += ("train_split", "eval_split", "eval_store", "in_memory", "device", "fused")
    for name in shared:
        values = {json.dumps(getattr(b, name)) for b in blocks}
        if len(values) > 1:
            raise ConfigError(
                f"grid file {grid}: {name} differs between [[grid]] tables ({sorted(values)}); it is shared by the "
                "whole sweep (one data pass), so set it at the top level or run separate sweeps"
            )


def _settings(c: ProbeConfig, store_prov: str, eval_prov: str, errors: list[str]) -> SweepSettings:
    if c.epochs < 1:
        errors.append(f"epochs must be >= 1, got {c.epochs}")
    if not 0 <= c.warmup <= max(c.epochs, 0):
        errors.append(f"warmup must be between 0 and epochs={c.epochs}, got {c.warmup}")
    if c.batch_size < 1:
        errors.append(f"batch_size must be >= 1, got {c.batch_size}")
    if not 0.0 <= c.holdout < 1.0:
        errors.append(f"holdout must be in [0, 1), got {c.holdout}")
    if c.shots is not None and c.fraction is not None:
        errors.append("give shots or fraction, not both")
    if c.shots is not None and c.shots < 1:
        errors.append(f"shots must be >= 1, got {c.shots}")
    if c.fraction is not None and not 0.0 < c.fraction <= 1.0:
        errors.append(f"fraction must be in (0, 1], got {c.fraction}")
    if c.dtype not in DTYPES:
        errors.append(f"dtype must be one of {DTYPES}, got {c.dtype!r}")
    if c.prefetch < 1:
        errors.append(f"prefetch must be >= 1, got {c.prefetch}")
    if c.shuffle_chunks < 0:
        errors.append(f"shuffle_chunks must be >= 0, got {c.shuffle_chunks}")
    if not c.seeds:
        errors.append("seeds is empty")
    return SweepSettings(
        epochs=c.epochs,
        warmup=c.warmup,
        batch_size=c.batch_size,
        data_seed=c.data_seed,
        holdout=float(c.holdout),
        shots=c.shots,
        fraction=None if c.fraction is None else float(c.fraction),
        dtype=c.dtype,
        train_split=c.train_split,
        eval_split=c.eval_split,
        store_provenance=store_prov,
        eval_provenance=eval_prov,
    )


def _resolve_layers(entries: Iterable[int | str], meta: StoreMeta) -> list[int]:
    out: list[int] = []
    for e in entries:
        if e == "all":
            out.extend(meta.layers)
        elif e == "last":
            out.append(meta.layers[-1])
        elif isinstance(e, str) and e.startswith("last:"):
            out.extend(meta.layers[-int(e[5:]) :])
        else:
            out.append(int(e))
    missing = sorted({x for x in out if x not in meta.layers})
    if missing:
        raise UnknownLayerError(
            f"the store has no layer(s) {missing} (stored layers: {', '.join(map(str, meta.layers))}); "
            "choose from those, or re-extract with `--layers` including them"
        )
    if not out:
        raise ConfigError("no layer requested; use --layer N, --layers all or --layers last")
    return list(dict.fromkeys(out))


def _learning_rates(c: ProbeConfig, errors: list[str]) -> list[tuple[float, float | None]]:
    if c.lr:
        if c.blr != (0.1,) and c.blr:
            errors.append("give lr (absolute) or blr (scaled by batch/256), not both")
        _check_positive("lr", c.lr, errors)
        return [(lr, None) for lr in c.lr]
    if not c.blr:
        errors.append("no learning rate: give lr or blr")
    _check_positive("blr", c.blr, errors)
    return [(b * c.batch_size / 256, b) for b in c.blr]


def _check_positive(name: str, values: Iterable[float], errors: list[str], *, allow_zero: bool = False) -> None:
    bad = [v for v in values if v < 0 or (v == 0 and not allow_zero)]
    if bad:
        errors.append(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {bad}")


def _check_choices(name: str, values: Iterable[str], choices: Sequence[str], errors: list[str]) -> None:
    bad = [v for v in values if v not in choices]
    if bad:
        errors.append(f"unknown {name} {bad}; choose from {', '.join(choices)}")


def _split_head(text: str) -> tuple[str, dict[str, Any]]:
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


def _check_axes(c: ProbeConfig, entries: Sequence[tuple[str, str, dict[str, Any]]], errors: list[str]) -> None:
    from epcache.probe.heads import head_options

    for name in HEAD_OPTION_AXES:
        if getattr(c, name) and entries and not any(name in head_options(kind) for _, kind, _ in entries):
            kinds = ", ".join(sorted({k for _, k, _ in entries}))
            errors.append(f"--{name.replace('_', '-')} was given but none of the heads ({kinds}) takes it")


def _token_choices(
    c: ProbeConfig, entries: Sequence[tuple[str, str, dict[str, Any]]], meta: StoreMeta, errors: list[str]
) -> dict[str, list[str]]:
    """Per head kind, the token selections it trains on (the tokens axis filtered by family)."""
    valid = set(LINEAR_TOKENS) | set(ATTENTIVE_TOKENS)
    bad = [t for t in c.tokens if t not in valid]
    if bad:
        errors.append(
            f"unknown tokens {bad}; linear heads read {', '.join(LINEAR_TOKENS)}, "
            f"pooling heads read {', '.join(ATTENTIVE_TOKENS)}"
        )
    if meta.layout.cls_index is None and any("cls" in t for t in c.tokens):
        errors.append("this store's backbone has no CLS token; use tokens gap (linear) or patch/all (pooling heads)")
    out: dict[str, list[str]] = {}
    for text, kind, explicit in entries:
        family = LINEAR_TOKENS if kind == "linear" else ("all", "patch") if kind == "mp" else ATTENTIVE_TOKENS
        if not c.tokens:
            default = "cls" if meta.layout.cls_index is not None else "gap"
            mp_default = "all" if meta.layout.cls_index is not None else "patch"  # MP: CLS + patches (§1.1)
            out[kind] = [default] if kind == "linear" else [mp_default] if kind == "mp" else ["patch"]
            continue
        chosen = [t for t in c.tokens if t in family]
        if not chosen and not (kind == "linear" and "tokens" in explicit):
            errors.append(
                f"head {text!r} cannot read tokens {list(c.tokens)}: "
                f"{'linear heads read' if kind == 'linear' else 'pooling heads read'} {', '.join(family)}"
            )
        out[kind] = chosen
    return out


def _check_head(spec: Any, tokens: str, mix: str, num_layers: int, meta: StoreMeta, num_classes: int) -> str | None:
    """Build the head on the meta device and run one forward; the error text, or None if it works."""
    import torch

    from epcache.probe.data.sources import build_head, head_input, pooled_dim

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


def _jsonable(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v
