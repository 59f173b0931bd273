"""The settings of :class:`~epcache.probe.config.probe_config.ProbeConfig`, grouped by concern.

Each group is a frozen dataclass whose fields keep the flat names the command line (``--batch-size``),
grid files (``batch_size = 256``) and the run directory's ``config.json`` use; a flat name belongs to
exactly one group, so ``ProbeConfig(batch_size=256)`` knows where it goes. A group on its own is
plain data: its values are checked and normalised (lists as tuples, layer specs parsed) when a
``ProbeConfig`` is built from it, the one place every door passes through.
"""

from __future__ import annotations

from dataclasses import dataclass

from epcache._docs import doc, document_fields
from epcache.probe.config.fields import Range

__all__ = ["DataConfig", "HeadsConfig", "InputsConfig", "OptimConfig", "RunConfig", "SolverConfig"]

_POSITIVE = Range(gt=0)
_COUNT = Range(ge=1)
_SEED = Range(ge=0, lt=2**63)  # numpy's generators take no negative seed, torch none beyond 64 bits


@document_fields
@dataclass(frozen=True)
class InputsConfig:
    """What the heads read: which layers and tokens, from which splits of which store, and how it is fetched."""

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
    train_split: str = doc("train", doc="split to train on (and to hold out from)")
    eval_split: str = doc("val", doc="split to report, scored once at each config's selected epoch")
    eval_store: str | None = doc(None, doc="another store holding eval_split (same backbone provenance required)")
    tap: str = doc(
        "block",
        doc="which activations of the blocks to read: block (the block outputs, the store itself) or a tap the store "
        "was extracted with (extract --taps: attn_out, attn_norm, mlp_hidden, mlp_out), read from <store>/taps/<name>/",
    )
    allow_incomplete: bool = doc(False, doc="train on the written blocks of an incomplete store")
    trust_store: bool = doc(
        False, doc="skip the store integrity checks (store/verify/integrity.py); recorded in every row"
    )
    cache_dir: str | None = doc(
        None,
        doc="local copies of the chunks of a store behind a URL (s3://...): epochs after the first read local disk",
    )
    cache_max_gb: float | None = doc(None, doc="evict least recently used cache_dir entries beyond this size",
                                     check=_POSITIVE)


@document_fields
@dataclass(frozen=True)
class HeadsConfig:
    """Which trained or solver heads the sweep builds, and the head-option axes that multiply them."""

    head: tuple[str, ...] = doc(("ep",), doc="head kinds or specs, e.g. \"ep\", \"linear(tokens='gap')\"")
    queries: tuple[int, ...] = doc((), doc="EP queries M; empty: the head's default (32)", check=_COUNT)
    d_out: tuple[int, ...] = doc((), doc="EP width divisor; empty: default (1)", check=_COUNT)
    num_heads: tuple[int, ...] = doc(
        (), doc="attention heads of MHCA-style poolers; empty: each kind's default", check=_COUNT
    )
    linear_fit: str = doc(
        "auto",
        doc="how linear heads are fitted: sgd (cross-entropy, the lr/wd grid) | lstsq (closed-form least squares, "
        "the ridge solver) | both (the selection rule chooses) | auto: both under recipe auto, sgd under a named "
        "recipe or --protocol (their papers' probe)",
    )


@document_fields
@dataclass(frozen=True)
class OptimConfig:
    """The training protocol: a named recipe and the fields that override it (``None`` or empty: the recipe's)."""

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


@document_fields
@dataclass(frozen=True)
class DataConfig:
    """Which training rows (holdout, low-shot subsets) and how they are streamed or held in memory."""

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
    select: str = doc(
        "auto",
        doc="how trained configs choose their epoch: holdout | cvK (K stratified folds of the training rows, each "
        "scored by a model trained on the others, then a refit on all rows; K >= 2) | auto: holdout when --holdout "
        "or --no-refit is given, few shot: cv with K = min(5, smallest class), under 1000 usable training rows: "
        "cv5, else holdout",
    )
    refit: bool = doc(
        True,
        doc="after the holdout selects each trained config's epoch, retrain it on train + holdout for exactly those "
        "steps (same protocol) and report and save that model; off: the selection model (never saw the holdout)",
    )
    protocol: str = doc(
        "none",
        doc="a published protocol by name: none | vtab1k (select on 800 of 1,000 train rows held against the other "
        "200, refit the selected config on all 1,000, score the eval split once; fixes holdout, select, refit)",
    )
    repeats: int = doc(
        1,
        doc="run the whole sweep with data seeds data_seed, data_seed+1, ...; each repeat selects its own config and "
        "the summary reports the mean ± std of the selected configs' eval top-1",
        check=_COUNT,
    )
    in_memory: bool | None = doc(
        None,
        doc="hold the selected training tokens in RAM (read and converted once) instead of streaming them every "
        "epoch; None (auto): held when they fit in a quarter of the available RAM, said once and recorded",
    )
    prefetch: int = doc(4, doc="batches the reader thread may run ahead", check=_COUNT)
    shuffle_chunks: int = doc(0, doc="chunks in the shuffle buffer; 0: enough for two batches (at least 4)",
                              check=Range(ge=0))
    eval_cache_mb: float = doc(4096.0, doc="holdout/eval tokens up to this size are read once and kept in RAM",
                               check=Range(ge=0))


@document_fields
@dataclass(frozen=True)
class SolverConfig:
    """The solver heads (epcache/probe/solvers); options in a head's parentheses override these."""

    k: tuple[int, ...] = doc((10, 20, 100, 200), doc="k-NN neighbour counts, all from one search", check=_COUNT)
    temperature: tuple[float, ...] = doc((0.07,), doc="k-NN vote temperatures T", check=_POSITIVE)
    c_preset: str = doc("dinov2", doc="logreg C grid: dinov2 (45 values), clip (96), raptor (100)")
    tries: int = doc(1, doc="few-shot draws per shot count (needs shots); mean ± std over tries", check=_COUNT)
    standardize: bool = doc(
        False,
        doc="scale each pooled feature to mean 0, std 1 (StandardScaler, fit on the fit rows only) before every "
        "solver; k-NN and NCM standardise, then L2-normalise; recorded in every row",
    )


@document_fields
@dataclass(frozen=True)
class RunConfig:
    """Where and how the sweep runs: run directory, device and precision, what is saved, which shard."""

    out: str | None = doc(None, doc="run directory; None: nothing is written (no resume)")
    device: str = doc("auto", doc="auto | cpu | cuda | cuda:N")
    dtype: str = doc("float32", doc="compute dtype; float64 is for exactness tests")
    amp: str = doc(
        "auto",
        doc="auto | none | bf16: bfloat16 autocast of the heads' matmuls (fp32 weights, losses, BN, MP "
        "covariance); auto: bf16 on CUDA, none on CPU",
    )
    compile: bool = doc(False, doc="run each stack of heads through torch.compile (recorded in every row)")
    fused: bool = doc(True, doc="stack same-shape heads into batched ops; False: one module per config (reference)")
    save_heads: bool = doc(True, doc="write heads/<id>.safetensors for every config's selected epoch")
    eval_curve: bool = doc(True, doc="score the eval split every epoch (curves, oracle); False: only at the end")
    shard: str | None = doc(
        None,
        doc="\"I/N\": train only part I of N of the sweep (job arrays); torchrun sets it from RANK",
    )
    check_anchor: str | None = doc(
        None,
        doc="a board.csv (or CSV with store_provenance, protocol, config, eval_top1 and an optional tolerance "
        "column, in points, default 0.5): the sweep's configs named in it train first, and a miss of their eval "
        "top-1 beyond the tolerance stops the sweep before any row is written",
    )
