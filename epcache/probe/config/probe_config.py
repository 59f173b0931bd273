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

from epcache._docs import doc, document_fields
from epcache.errors import ConfigError
from epcache.probe.config.fields import Range, check_values, split_list
from epcache.probe.config.inputs import DTYPES, SEQUENCE_SOURCES, VECTOR_SOURCES

__all__ = [
    "ATTENTIVE_TOKENS",
    "DTYPES",
    "HEAD_OPTION_AXES",
    "LINEAR_TOKENS",
    "ProbeConfig",
    "check_config_values",
    "parse_heads",
    "parse_layers",
    "parse_list",
]

LINEAR_TOKENS: tuple[str, ...] = VECTOR_SOURCES  # what a linear head can read
ATTENTIVE_TOKENS: tuple[str, ...] = SEQUENCE_SOURCES  # pooling heads, MP
HEAD_OPTION_AXES: tuple[str, ...] = ("queries", "d_out", "num_heads")  # ProbeConfig axes that are head options
OPTIMIZER_NAMES: tuple[str, ...] = ("lars", "adamw", "adam", "sgd")
_POSITIVE = Range(gt=0)
_COUNT = Range(ge=1)
_SEED = Range(ge=0, lt=2**63)  # numpy's generators take no negative seed, torch none beyond 64 bits
_HEAD_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\((.*)\))?\s*$", re.DOTALL)


@document_fields
@dataclass(frozen=True)
class ProbeConfig:
    """Everything ``epcache probe`` takes; list-valued fields are sweep axes (their product is the sweep).

    Fields map 1:1 to CLI options (``--d-out`` -> ``d_out``). Tuple fields accept a scalar or a
    list in Python; the CLI passes comma strings through :func:`parse_list` / :func:`parse_heads`
    / :func:`parse_layers`. Head-option axes (``queries``, ``d_out``, ``num_heads``) multiply
    only the heads that take that option, so ``head=("linear", "ep"), queries=(4, 8)`` gives one
    linear and two EP heads per remaining combination; the same holds for ``tokens`` (linear
    heads take the cls/gap values, pooling heads the patch/all values).

    Optimisation fields (``optimizer``, ``lr``, ``blr``, ``wd``, ``epochs``, ``warmup``,
    ``batch_size``, ``holdout``, ``min_steps``) default to the ``recipe``'s values (``None`` or
    empty = from the recipe); the recipe adapts its own defaults to the dataset and records how.
    """

    store: str = doc(doc="feature store path or URL (the train split, and the eval split unless eval_store)")
    head: tuple[str, ...] = doc(("ep",), doc="head kinds or specs, e.g. \"ep\", \"linear(tokens='gap')\"")
    queries: tuple[int, ...] = doc((), doc="EP queries M; empty: the head's default (32)", check=_COUNT)
    d_out: tuple[int, ...] = doc((), doc="EP width divisor; empty: default (1)", check=_COUNT)
    num_heads: tuple[int, ...] = doc(
        (), doc="attention heads of MHCA-style poolers; empty: each kind's default", check=_COUNT
    )
    layers: tuple[int | str, ...] = doc(
        ("last",), doc="block indices (negative: from the end), a slice like -4:, \"last\" or \"all\"",
        check=Range(why="block indices, 'last', 'all' or a slice like -4:"),
    )
    tokens: tuple[str, ...] = doc(
        (),
        doc="token kind each head reads: cls, gap, cls+gap, pooled (linear); patch, all, registers, patch+registers "
        "(pooling heads; mp: all, patch); empty: linear reads cls, pooling heads patch, mp all",
    )
    layer_mix: tuple[str, ...] = doc(
        ("none",),
        doc="none: one config per layer; concat|mean|tokens: all layers as one input",
    )
    recipe: str = doc(
        "auto",
        doc="training protocol (`epcache recipes`): auto | ep-paper | dinov2-linear | capi-attentive",
    )
    lr: tuple[float, ...] = doc((), doc="absolute peak lrs (a grid, trained fused); empty: the recipe's",
                                check=_POSITIVE)
    blr: tuple[float, ...] = doc((), doc="base lrs, lr = blr * batch_size / 256; empty: the recipe's",
                                 check=_POSITIVE)
    wd: tuple[float, ...] = doc((), doc="weight decays (LARS: only on >=2-D params, as MAE); empty: the recipe's",
                                check=Range(ge=0))
    optimizer: tuple[str, ...] = doc((), doc="lars | adamw | adam | sgd; empty: the recipe's")
    seeds: tuple[int, ...] = doc((0,), doc="head-init seeds; data order depends on data_seed only", check=_SEED)
    epochs: int | None = doc(None, doc="evaluation epochs; None: the recipe's (with its step floor)", check=_COUNT)
    warmup: float | None = doc(None, doc="warm-up epochs (linear from 0, per iteration); None: the recipe's",
                               check=Range(ge=0))
    batch_size: int | None = doc(None, doc="training samples per step (drop_last); None: the recipe's, adapted to the "
                                 "dataset",
                                 check=Range(ge=2, why="BatchNorm needs batch statistics"))
    min_steps: int | None = doc(None, doc="floor on optimiser steps (epochs become several passes); None: the recipe's",
                                check=Range(ge=0))
    data_seed: int = doc(0, doc="seeds the holdout split, low-shot subset, batch order and view choice", check=_SEED)
    holdout: float | None = doc(
        None,
        doc="stratified fraction of train that selects each config's epoch and the best config (>= 1 per class when "
        "possible); 0: last epoch, ranked on eval; None: the recipe's",
        check=Range(ge=0, lt=1, why="0: no holdout, the last epoch is kept"),
    )
    shots: int | tuple[int, ...] | None = doc(
        None,
        doc="low-shot: K per class (after the holdout); several: solver heads",
        check=_COUNT,
    )
    fraction: float | None = doc(None, doc="low-shot: this fraction of each class's training samples",
                                 check=Range(gt=0, le=1))
    train_split: str = doc("train", doc="split to train on (and to hold out from)")
    eval_split: str = doc("val", doc="split to report, scored once at each config's selected epoch")
    eval_store: str | None = doc(None, doc="another store holding eval_split (same backbone provenance required)")
    grid: str | None = doc(None, doc="TOML sweep file; its keys override these fields (see load_grid)")
    out: str | None = doc(None, doc="run directory; None: nothing is written (no resume)")
    device: str = doc("auto", doc="auto | cpu | cuda | cuda:N")
    in_memory: bool | None = doc(
        None,
        doc="hold the selected training tokens in RAM (read and converted once) instead of streaming them every "
        "epoch; None (auto): held when they fit in a quarter of the available RAM, said once and recorded",
    )
    allow_incomplete: bool = doc(False, doc="train on the written blocks of an incomplete store")
    dtype: str = doc("float32", doc="compute dtype; float64 is for exactness tests")
    amp: str = doc(
        "auto",
        doc="auto | none | bf16: bfloat16 autocast of the heads' matmuls (fp32 weights, losses, BN, MP "
        "covariance); auto: bf16 on CUDA, none on CPU",
    )
    compile: bool = doc(False, doc="run each stack of heads through torch.compile (recorded in every row)")
    fused: bool = doc(True, doc="stack same-shape heads into batched ops; False: one module per config (reference)")
    save_heads: bool = doc(True, doc="write heads/<id>.safetensors for every config's selected epoch")
    prefetch: int = doc(4, doc="batches the reader thread may run ahead", check=_COUNT)
    shuffle_chunks: int = doc(0, doc="chunks in the shuffle buffer; 0: enough for two batches (at least 4)",
                              check=Range(ge=0))
    eval_cache_mb: float = doc(4096.0, doc="holdout/eval tokens up to this size are read once and kept in RAM",
                               check=Range(ge=0))
    eval_curve: bool = doc(True, doc="score the eval split every epoch (curves, oracle); False: only at the end")
    shard: str | None = doc(
        None,
        doc="\"I/N\": train only part I of N of the sweep (job arrays); torchrun sets it from RANK",
    )
    trust_store: bool = doc(
        False, doc="skip the store integrity checks (store/verify/integrity.py); recorded in every row"
    )
    cache_dir: str | None = doc(
        None,
        doc="local copies of the chunks of a store behind a URL (s3://...): epochs after the first read local disk",
    )
    cache_max_gb: float | None = doc(None, doc="evict least recently used cache_dir entries beyond this size",
                                     check=_POSITIVE)
    # solver heads (epcache/probe/solvers); head options in parentheses override these
    k: tuple[int, ...] = doc((10, 20, 100, 200), doc="k-NN neighbour counts, all from one search", check=_COUNT)
    temperature: tuple[float, ...] = doc((0.07,), doc="k-NN vote temperatures T", check=_POSITIVE)
    c_preset: str = doc("dinov2", doc="logreg C grid: dinov2 (45 values), clip (96), raptor (100)")
    tries: int = doc(1, doc="few-shot draws per shot count (needs shots); mean ± std over tries", check=_COUNT)

    def __post_init__(self) -> None:
        """Every field checked and normalised by :func:`check_config_values`, as the CLI and grid files are."""
        values = check_config_values({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        for name, value in values.items():
            object.__setattr__(self, name, value)

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

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


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
