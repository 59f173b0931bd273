"""What ``epcache probe`` takes: :class:`ProbeConfig`, and the parsers of its comma-list options.

Fields left ``None`` (or empty) come from the recipe (``--recipe``, default ``auto``); an explicit
value overrides that one field. The config is resolved once, with its TOML grid file, into the
sweep's protocol (``epcache.probe.config.protocol``) and runs (``epcache.probe.sweep.grid``), and the data path
and every results row read from that resolution, never from the raw request.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from epcache._docs import doc, document_fields, section
from epcache.errors import ConfigError
from epcache.probe.config.fields import check_values, split_list
from epcache.probe.config.inputs import DTYPES, SEQUENCE_SOURCES, VECTOR_SOURCES
from epcache.probe.config.sections import (
    DataConfig,
    HeadsConfig,
    InputsConfig,
    OptimConfig,
    RunConfig,
    SolverConfig,
)

__all__ = [
    "ATTENTIVE_TOKENS",
    "DTYPES",
    "HEAD_OPTION_AXES",
    "LINEAR_TOKENS",
    "DataConfig",
    "HeadsConfig",
    "InputsConfig",
    "OptimConfig",
    "ProbeConfig",
    "RunConfig",
    "SolverConfig",
    "check_config_values",
    "parse_heads",
    "parse_layers",
    "parse_list",
    "section_of",
]

LINEAR_TOKENS: tuple[str, ...] = VECTOR_SOURCES  # what a linear head can read
ATTENTIVE_TOKENS: tuple[str, ...] = SEQUENCE_SOURCES  # pooling heads, MP
HEAD_OPTION_AXES: tuple[str, ...] = ("queries", "d_out", "num_heads")  # ProbeConfig axes that are head options
OPTIMIZER_NAMES: tuple[str, ...] = ("lars", "adamw", "adam", "sgd")
_HEAD_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*$", re.DOTALL)


@document_fields
@dataclass(frozen=True, init=False)
class ProbeConfig:
    """Everything ``epcache probe`` takes, grouped by concern; list-valued settings are sweep axes.

    The groups (``inputs``, ``heads``, ``optim``, ``data``, ``solvers``, ``run``) are read nested
    (``config.optim.lr``), but every setting keeps one flat name, unique across the groups, that
    maps 1:1 to a CLI option (``--d-out`` -> ``d_out``), a grid-file key and a key of the run
    directory's ``config.json`` (:meth:`to_json`, :meth:`flat`). So a config is built, or changed
    with ``dataclasses.replace``, from flat names, groups, or both (a flat name overrides the
    group that holds it)::

        ProbeConfig(store="s.zarr", head=("linear",), lr=(1e-3,), epochs=2)
        ProbeConfig(store="s.zarr", optim=OptimConfig(lr=(1e-3,), epochs=2))

    Tuple settings accept a scalar or a list in Python; the CLI passes comma strings through
    :func:`parse_list` / :func:`parse_heads` / :func:`parse_layers`. Head-option axes
    (``queries``, ``d_out``, ``num_heads``) multiply only the heads that take that option, so
    ``head=("linear", "ep"), queries=(4, 8)`` gives one linear and two EP heads per remaining
    combination; the same holds for ``tokens`` (linear heads take the cls/gap values, pooling
    heads the patch/all values).

    Optimisation settings (``optimizer``, ``lr``, ``blr``, ``wd``, ``epochs``, ``warmup``,
    ``batch_size``, ``min_steps``, and ``holdout``) default to the ``recipe``'s values (``None``
    or empty = from the recipe); the recipe adapts its own defaults to the dataset and records how.
    """

    store: str = doc(doc="feature store path or URL (the train split, and the eval split unless eval_store)")
    grid: str | None = doc(None, doc="TOML sweep file; its keys override these fields (see load_grid)")
    inputs: InputsConfig = section(InputsConfig, doc="what the heads read")
    heads: HeadsConfig = section(HeadsConfig, doc="which heads, and their option axes")
    optim: OptimConfig = section(OptimConfig, doc="the training protocol")
    data: DataConfig = section(DataConfig, doc="which training rows, and how they are fed")
    solvers: SolverConfig = section(SolverConfig, doc="k-NN, ridge, logistic and NCM settings")
    run: RunConfig = section(RunConfig, doc="where and how the sweep runs")

    def __init__(
        self,
        store: str,
        *,
        grid: str | None = None,
        inputs: InputsConfig | None = None,
        heads: HeadsConfig | None = None,
        optim: OptimConfig | None = None,
        data: DataConfig | None = None,
        solvers: SolverConfig | None = None,
        run: RunConfig | None = None,
        **settings: Any,
    ) -> None:
        """Groups and/or flat settings, all checked at once by :func:`check_config_values`.

        Raises:
            ConfigError: an unknown setting, a group of the wrong type, or every refused value in one message.
        """
        given = {"inputs": inputs, "heads": heads, "optim": optim, "data": data, "solvers": solvers, "run": run}
        unknown = sorted(set(settings) - set(_SECTION_OF))
        if unknown:
            raise ConfigError(f"unknown ProbeConfig field(s) {unknown}; accepted: {sorted(_SECTION_OF)}")
        values: dict[str, Any] = {"store": store, "grid": grid}
        for name, cls in _SECTIONS.items():
            group = given[name]
            if group is not None and not isinstance(group, cls):
                raise ConfigError(f"ProbeConfig {name}: expected {cls.__name__}, got {type(group).__name__}")
            group = cls() if group is None else group
            values.update({f.name: getattr(group, f.name) for f in dataclasses.fields(group)})
        values.update(settings)
        values = check_config_values(values)
        object.__setattr__(self, "store", values["store"])
        object.__setattr__(self, "grid", values["grid"])
        for name, cls in _SECTIONS.items():
            object.__setattr__(self, name, cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)}))

    @classmethod
    def from_cli(cls, **options: Any) -> ProbeConfig:
        """A config from command-line text: a numeric option's string is read as its number first.

        ``--epochs 3`` arrives as ``"3"``; reading it here rather than in the CLI framework means
        ``--epochs true`` or ``--epochs nan`` is refused by the same check, with the same message,
        as ``epochs = true`` in a grid file or ``ProbeConfig(epochs=True)``.

        Raises:
            ConfigError: every refused field, in one message.
        """
        return cls(**check_config_values(options, text=True))

    def flat(self) -> dict[str, Any]:
        """Every setting by its flat name (the CLI's, the grid file's), in the order ``config.json`` records them."""
        return {name: getattr(self if not group else getattr(self, group), name) for name, group in _SECTION_OF.items()}

    def to_json(self) -> dict[str, Any]:
        """Plain JSON of :meth:`flat` (tuples become lists): the run directory's ``config.json`` and plan."""
        return json.loads(json.dumps(self.flat()))


_SECTIONS: dict[str, type] = {f.name: f.metadata["section"] for f in dataclasses.fields(ProbeConfig)
                              if f.metadata.get("section") is not None}
_FLAT_ORDER = (  # the flat settings in the order config.json has always listed them
    "store", "head", "queries", "d_out", "num_heads", "layers", "tokens", "layer_mix", "recipe", "lr", "blr", "wd",
    "optimizer", "seeds", "epochs", "warmup", "batch_size", "min_steps", "data_seed", "holdout", "shots", "fraction",
    "train_split", "eval_split", "eval_store", "grid", "out", "device", "in_memory", "allow_incomplete", "dtype",
    "amp", "compile", "fused", "save_heads", "prefetch", "shuffle_chunks", "eval_cache_mb", "eval_curve", "shard",
    "trust_store", "cache_dir", "cache_max_gb", "k", "temperature", "c_preset", "tries",
    "standardize", "refit", "select", "linear_fit", "check_anchor", "protocol", "repeats", "tap",
)
_GROUP_OF = {"store": "", "grid": ""} | {
    f.name: group for group, cls in _SECTIONS.items() for f in dataclasses.fields(cls)
}
assert sorted(_GROUP_OF) == sorted(_FLAT_ORDER) and len(_GROUP_OF) == len(_FLAT_ORDER), "a setting without a group"
_SECTION_OF: dict[str, str] = {name: _GROUP_OF[name] for name in _FLAT_ORDER}  # flat name -> its group ("": top)


def section_of(name: str) -> str:
    """The group attribute (``"optim"``) that holds flat setting ``name``; ``""`` for ``store`` and ``grid``.

    Raises:
        KeyError: not a setting.
    """
    return _SECTION_OF[name]


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
    return split_list(text) if isinstance(text, str) else tuple(text)


def parse_layers(text: str | Sequence[int | str]) -> tuple[int | str, ...]:
    """``"all"``, ``"last"``, ``"11"``, ``"-1"``, ``"-4:"`` or ``"9,10,11"`` -> layer entries resolved later.

    Raises:
        ConfigError: an entry is neither an integer nor ``all``/``last``/``last:K``.
    """
    items = parse_list(text, str) if isinstance(text, str) else tuple(text)
    out: list[int | str] = []
    for item in items:
        if isinstance(item, int) or item in ("all", "last"):
            out.append(item)
            continue
        if ":" in str(item):  # "-4:" or "last:4", resolved against the model's blocks as extract does
            out.append(str(item).strip().replace("lastk:", "last:"))  # lastk:4 = last:4 (the older spelling)
            continue
        try:
            out.append(int(item))
        except ValueError:
            raise ConfigError(
                f"layer {item!r} is not a block index (-1 = the model's last), a slice like -4:, 'last' or 'all'"
            ) from None
    return tuple(out)


def check_config_values(values: Mapping[str, Any], *, text: bool = False) -> dict[str, Any]:
    """The one check of :class:`ProbeConfig` values, whichever way they arrive.

    ``ProbeConfig(...)`` (so the library's ``epcache.probe``), :meth:`ProbeConfig.from_cli`
    (``epcache probe``) and each table of a grid file (``load_grid``, which prefixes the file and
    the table) all call it, so a value is refused the same way, with the same message naming the
    field and what it must be, wherever it was written. Types come from the field annotations and
    ranges from each field's ``check=Range(...)`` (``epcache.probe.config.fields``).

    Args:
        values: field name -> value, any subset of the fields.
        text: command-line text: a numeric field's string is read as its number first.

    Returns:
        The values normalised: list fields as tuples, numbers as their field's type, layer specs
        parsed, one shot count as an int.

    Raises:
        ConfigError: every refused field, in one line.
    """
    out, problems = check_values(ProbeConfig, values, text=text)
    if "layers" in out:  # its elements passed the type check; the specs themselves are checked here
        try:
            out["layers"] = parse_layers(out["layers"])
        except ConfigError as e:
            problems.append(str(e))
    shots = out.get("shots")
    if isinstance(shots, tuple):  # one shot count is a plain K; several run solver heads once per K
        out["shots"] = None if not shots else shots[0] if len(shots) == 1 else shots
    if problems:
        raise ConfigError("; ".join(problems))
    return out
