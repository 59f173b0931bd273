"""Resolve a recipe plus the user's explicit flags against a dataset into one training protocol.

The protocol is the single source of truth of a run: the batch stream, the schedule, the
trainer and every results row read it, and it enters every config's id. A recipe's defaults
adapt to the dataset (a batch that gives several steps per epoch, a length floor in optimiser
steps, a warm-up that scales with the length); explicit flags are taken as given, and asking
for something impossible (an explicit batch larger than the training set, a warm-up longer than
training) is an error listed together with every other problem of the sweep.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from epcache.probe.config.recipes import Recipe

__all__ = [
    "Protocol",
    "RegimeVerdict",
    "adapted_batch",
    "lr_text",
    "optimizer_settings",
    "regime_verdict",
    "resolve_holdout",
    "resolve_protocol",
]

MIN_STEPS_PER_EPOCH = 8  # a recipe's batch shrinks until an epoch has about this many steps


@dataclass(frozen=True, slots=True)
class Protocol:
    """How every trained config of a sweep is optimised; JSON in each row under ``protocol``."""

    recipe: str
    optimizers: tuple[str, ...]  # the optimizer axis
    momentum: float | None  # for the recipe's own optimiser (others use their defaults)
    betas: tuple[float, float] | None
    recipe_optimizer: str  # momentum / betas above belong to this optimiser
    lr_rule: str  # "absolute" or "blr" (lr = blr x batch / 256)
    lrs: tuple[tuple[float, float | None], ...]  # (absolute lr, blr or None) grid
    wd: tuple[float, ...]
    batch_size: int
    epochs: int  # evaluation epochs (the holdout picks one)
    passes_per_epoch: int  # passes over the training set per epoch (> 1 only to meet min_steps)
    steps_per_epoch: int  # optimiser steps per epoch (all passes)
    total_steps: int
    warmup_steps: int
    min_steps: int  # the length floor that was applied (0: none)
    adapted: tuple[str, ...]  # every field the dataset changed, and why (printed once, recorded)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["lrs"] = [list(x) for x in self.lrs]
        doc["betas"] = None if self.betas is None else list(self.betas)
        return doc


def optimizer_settings(protocol: Protocol, name: str) -> dict[str, Any]:
    """Momentum and betas for optimiser ``name``: the recipe's for its own optimiser, else the defaults."""
    if name == protocol.recipe_optimizer:
        return {"momentum": protocol.momentum, "betas": protocol.betas}
    return {"momentum": None, "betas": None}


def resolve_holdout(value: float | None, recipe: Recipe, errors: list[str]) -> float:
    """The holdout fraction: explicit, else the recipe's."""
    h = recipe.holdout if value is None else float(value)
    if not (math.isfinite(h) and 0.0 <= h < 1.0):
        errors.append(f"--holdout must be in [0, 1), got {value} (0: no holdout, the last epoch is kept)")
        return recipe.holdout
    return h


def adapted_batch(recipe_batch: int, n_train: int) -> int:
    """The recipe's batch, shrunk (by powers of 2) until an epoch has >= 8 steps, but not below 16.

    A dataset smaller than 16 samples trains on all of it as one batch.
    """
    target = max(1, n_train // MIN_STEPS_PER_EPOCH)
    pow2 = 1 << (target.bit_length() - 1)
    return max(2, min(recipe_batch, max(pow2, min(16, n_train)), n_train))


def resolve_protocol(
    c: Any,
    recipe: Recipe,
    *,
    n_train: int | None,
    errors: list[str],
) -> Protocol:
    """Apply ``recipe`` and the explicit fields of ``c`` (a ProbeConfig) to a training set of ``n_train``.

    ``n_train=None`` resolves without a dataset (no batch adaptation; step counts are per the
    recipe's batch and unknown length): used to expand a sweep for inspection.
    Problems are appended to ``errors`` (one message for the whole sweep).
    """
    adapted: list[str] = []
    # ---- batch
    if c.optim.batch_size is not None:
        batch = int(c.optim.batch_size)
        if batch < 2:
            errors.append(f"--batch-size must be >= 2 (BatchNorm needs batch statistics), got {batch}")
            batch = 2
        if n_train is not None and batch > n_train:
            errors.append(
                f"--batch-size {batch} is larger than the {n_train} training samples (no full batch); lower "
                "--batch-size, or leave it out and the recipe adapts it"
            )
    elif n_train is None:
        batch = recipe.batch_size
    else:
        if n_train < 2:
            errors.append(f"only {n_train} training sample(s) after the holdout: BatchNorm needs >= 2 per batch; "
                          "use --holdout 0 or more data")
        batch = adapted_batch(recipe.batch_size, max(n_train, 2))
        if batch != recipe.batch_size:
            adapted.append(f"batch {batch} (recipe {recipe.batch_size}; {n_train} training samples)")
    # ---- learning rates
    lr, blr = tuple(c.optim.lr), tuple(c.optim.blr)
    if lr and blr:
        errors.append("give --lr (absolute) or --blr (scaled by batch/256), not both")
    if not lr and not blr:
        lr, blr = recipe.lr, recipe.blr
    _check_finite("lr", lr, errors, positive=True)
    _check_finite("blr", blr, errors, positive=True)
    lrs = tuple((x, None) for x in lr) if lr else tuple((b * batch / 256, b) for b in blr)
    wd = tuple(c.optim.wd) if c.optim.wd else recipe.wd
    _check_finite("wd", wd, errors, positive=False)
    optimizers = tuple(c.optim.optimizer) if c.optim.optimizer else (recipe.optimizer,)
    # ---- length
    explicit_length = c.optim.epochs is not None
    epochs = int(c.optim.epochs) if explicit_length else recipe.epochs
    if epochs < 1:
        errors.append(f"--epochs must be >= 1, got {epochs}")
        epochs = 1
    min_steps = int(c.optim.min_steps) if c.optim.min_steps is not None else (
        0 if explicit_length else recipe.min_steps)
    if min_steps < 0:
        errors.append(f"--min-steps must be >= 0, got {min_steps}")
        min_steps = 0
    spe_data = max(1, (n_train or batch) // batch)
    passes = max(1, math.ceil(min_steps / (epochs * spe_data))) if min_steps else 1
    if passes > 1 and n_train is not None:
        adapted.append(f"{passes} passes per epoch ({epochs} epochs x {passes * spe_data} steps = "
                       f"{epochs * passes * spe_data} steps >= min {min_steps})")
    spe = passes * spe_data
    total = epochs * spe
    # ---- warm-up
    if c.optim.warmup is not None:
        w = float(c.optim.warmup)
        if not (math.isfinite(w) and 0 <= w <= epochs):
            errors.append(f"--warmup must be between 0 and --epochs ({epochs}), got {c.optim.warmup}")
            w = 0.0
        warmup = round(w * spe)
    elif recipe.warmup_fraction is not None:
        warmup = round(recipe.warmup_fraction * total)
    else:
        we = float(recipe.warmup_epochs or 0.0)
        if epochs != recipe.epochs:
            we = we * epochs / recipe.epochs
            adapted.append(f"warm-up {we:g} epochs (recipe {recipe.warmup_epochs:g} of {recipe.epochs})")
        warmup = round(we * spe)
    return Protocol(
        recipe=recipe.name,
        optimizers=optimizers,
        momentum=recipe.momentum,
        betas=recipe.betas,
        recipe_optimizer=recipe.optimizer,
        lr_rule="absolute" if lr else "blr",
        lrs=lrs,
        wd=tuple(float(x) for x in wd),
        batch_size=batch,
        epochs=epochs,
        passes_per_epoch=passes,
        steps_per_epoch=spe,
        total_steps=total,
        warmup_steps=min(warmup, total),
        min_steps=min_steps,
        adapted=tuple(adapted),
    )


def _check_finite(name: str, values: tuple[float, ...], errors: list[str], *, positive: bool) -> None:
    bad = [v for v in values if not math.isfinite(v) or v < 0 or (positive and v == 0)]
    if bad:
        errors.append(f"--{name} values must be finite and {'> 0' if positive else '>= 0'}, got {bad}")


@dataclass(frozen=True, slots=True)
class RegimeVerdict:
    """A protocol outside its recipe's regime: the one line to print, and whether the sweep is refused."""

    line: str
    refuse: bool


def lr_text(p: Protocol) -> str:
    """The peak lrs as trained, with the blr rule that scaled them: ``lr 0.00625 (blr 0.1 x 16/256)``."""
    lrs = sorted(x for x, _ in p.lrs)
    text = f"lr {lrs[0]:.3g}" if len(lrs) == 1 else f"{len(lrs)} lrs {lrs[0]:.3g}..{lrs[-1]:.3g}"
    if p.lr_rule != "blr":
        return text
    blrs = sorted(b for _, b in p.lrs if b is not None)
    base = f"{blrs[0]:g}" if len(blrs) == 1 else f"{blrs[0]:g}..{blrs[-1]:g}"
    return f"{text} (blr {base} x {p.batch_size}/256)"


def regime_verdict(c: Any, recipe: Recipe, p: Protocol) -> RegimeVerdict | None:
    """Whether ``p`` left the regime ``recipe`` was designed for, judging only the values the recipe chose.

    An lr given as ``--lr`` (or ``--blr`` with ``--batch-size``) and a length given as ``--epochs``
    or ``--min-steps`` are the user's; the recipe's own blr rule on its adapted batch and its own
    length are not, and a recipe marked ``refuse`` (ep-paper) refuses such an lr rather than train
    at chance: an explicit ``--lr`` or ``--blr`` runs it anyway (the line is still printed).
    """
    regime = recipe.regime
    problems: list[str] = []
    fixes: list[str] = []
    lr_chosen = not c.optim.lr and not (c.optim.blr and c.optim.batch_size is not None)
    lrs = [x for x, _ in p.lrs]
    lo, hi = regime.lr
    lr_out = lr_chosen and bool(lrs) and (max(lrs) < lo or min(lrs) > hi)
    if lr_out:
        where = "below" if max(lrs) < lo else "above"
        problems.append(f"{lr_text(p)} {'is' if len(lrs) == 1 else 'are'} {where} its {lo:g}..{hi:g}")
        fixes.append(f"--lr {regime.fix_lr:g}" if regime.fix_lr is not None else "--lr LRS (absolute)")
    if c.optim.epochs is None and c.optim.min_steps is None and p.total_steps < regime.min_steps:
        problems.append(f"{p.total_steps} steps are below its {regime.min_steps}")
        fixes.append(f"--min-steps {regime.min_steps}")
    if not problems:
        return None
    todo = " ".join(fixes)
    if recipe.name != "auto":
        todo = f"--recipe auto, or {todo}"
    line = f"recipe {recipe.name} is outside the regime it was designed for: {', '.join(problems)}; use {todo}"
    refuse = lr_out and regime.refuse and not c.optim.blr
    if refuse:
        line += (f"; refused, as {recipe.name} does not learn there (an explicit --lr or --blr runs it anyway; "
                 "`epcache recipes` lists each recipe's regime)")
    return RegimeVerdict(line, refuse)
