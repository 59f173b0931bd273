"""Published evaluation protocols as presets (``protocol``) and repeats over data seeds (``repeats``).

A lab that reports VTAB-1k wants the protocol by name, not as five flags it may get subtly wrong:
hyperparameters chosen on train800/val200 (800 + 200 rows of the train split), the chosen config
refit on all 1,000 and the test split scored once. A preset therefore fixes the flags it stands for
(holdout, selection rule, refit, low-shot subsets) and refuses them when they are given, naming the
conflict, so a row that says ``"suite": "vtab1k"`` was produced by exactly that protocol.

Repeats re-run the whole sweep with data seeds ``data_seed``, ``data_seed + 1``, ...; each repeat
selects its own config, and the mean ± std of the selected configs' eval top-1 is what eva-style
reports quote. Both are checked here, without torch, so ``epcache probe`` refuses them at once.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from epcache.errors import ConfigError
from epcache.probe.config.probe_config import ProbeConfig
from epcache.probe.names import SOLVER_KINDS

__all__ = ["SUITES", "VTAB1K", "VTAB_HOLDOUT", "VTAB_ROWS", "VTAB_TRAIN", "check_suite", "check_suite_store",
           "suite_config", "suite_record", "suite_text"]

VTAB1K = "vtab1k"
SUITES: tuple[str, ...] = ("none", VTAB1K)
VTAB_TRAIN = 800  # train800: the rows the selection models train on
VTAB_ROWS = 1000  # train800val200: the rows the selected config is refit on
VTAB_HOLDOUT = (VTAB_ROWS - VTAB_TRAIN) / VTAB_ROWS  # val200 as a fraction, the value rows and ids record


def check_suite(config: ProbeConfig) -> None:
    """Refuse an unknown preset, and flags a preset fixes (every conflict, with its fix, in one message).

    Raises:
        ConfigError: unknown ``protocol``; with vtab1k: ``holdout``, ``select`` other than auto/holdout,
            ``refit`` off, ``shots`` or ``fraction`` given, or solver heads requested.
    """
    d = config.data
    if d.protocol not in SUITES:
        raise ConfigError(f"--protocol must be one of {', '.join(SUITES)}, got {d.protocol!r}")
    if d.protocol != VTAB1K:
        return
    conflicts = []
    if d.holdout is not None:
        conflicts.append(f"--holdout {d.holdout:g} (vtab1k holds out val200: 200 of its 1,000 train rows)")
    if str(d.select).strip().lower() not in ("auto", "holdout"):
        conflicts.append(f"--select {d.select} (vtab1k selects on the 200 held-out rows)")
    if not d.refit:
        conflicts.append("--no-refit (vtab1k refits the selected config on all 1,000 rows)")
    if d.shots is not None or d.fraction is not None:
        given = f"--shots {d.shots}" if d.shots is not None else f"--fraction {d.fraction:g}"
        conflicts.append(f"{given} (vtab1k trains on exactly 800 rows, refits on 1,000)")
    solvers = [h for h in config.heads.head if h.split("(", 1)[0].strip() in SOLVER_KINDS]
    if solvers:
        conflicts.append(f"solver heads {', '.join(solvers)} (they are not refit on train800val200)")
    if conflicts:
        raise ConfigError(f"--protocol vtab1k fixes the selection, so it cannot take {'; '.join(conflicts)}. "
                          "Drop these options (the preset sets them), or drop --protocol vtab1k to set them yourself")


def check_suite_store(config: ProbeConfig, usable_train: int) -> None:
    """Refuse a preset the store's splits cannot support, before anything is trained.

    Raises:
        ConfigError: vtab1k with fewer than 1,000 usable train rows, or scoring the split it trains on.
    """
    if config.data.protocol != VTAB1K:
        return
    inputs = config.inputs
    if usable_train < VTAB_ROWS:
        raise ConfigError(
            f"--protocol vtab1k needs {VTAB_ROWS:,} usable rows in the train split {inputs.train_split!r} "
            f"(train800val200), but it has {usable_train:,}; extract a train split of at least {VTAB_ROWS:,} "
            "images (or the dataset's train800val200), or drop --protocol vtab1k"
        )
    if inputs.eval_split == inputs.train_split and inputs.eval_store is None:
        raise ConfigError(
            f"--protocol vtab1k scores a separate test split once, but --eval-split is the train split "
            f"{inputs.train_split!r}; pass --eval-split test (the split holding the test images)"
        )


def suite_config(config: ProbeConfig, repeat: int = 0) -> ProbeConfig:
    """``config`` with what its preset fixes set, and the data seed of repeat ``repeat`` (0: ``data_seed``).

    Raises:
        ConfigError: as :func:`check_suite`, and a repeat index outside ``[0, repeats)``.
    """
    check_suite(config)
    if not 0 <= repeat < config.data.repeats:
        raise ConfigError(f"repeat {repeat} is outside the {config.data.repeats} repeats of this sweep")
    changes: dict[str, object] = {"data_seed": config.data.data_seed + repeat}
    if config.data.protocol == VTAB1K:
        changes |= {"holdout": VTAB_HOLDOUT, "select": "holdout", "refit": True}
    return dataclasses.replace(config, **changes)


def suite_text(config: ProbeConfig) -> str:
    """What the plan line adds for a preset and for repeats (``""`` for neither), so the start says what runs."""
    text = ""
    if config.data.protocol == VTAB1K:
        text += (f"; protocol vtab1k: select on train{VTAB_TRAIN}/val{VTAB_ROWS - VTAB_TRAIN}, refit on "
                 f"train{VTAB_TRAIN}val{VTAB_ROWS - VTAB_TRAIN}, score eval once")
    if config.data.repeats > 1:
        text += f"; repeats {config.data.repeats}, this one with data_seed {config.data.data_seed}"
    return text


def suite_record(config: ProbeConfig, repeat: int) -> dict[str, Any]:
    """The keys a row's ``protocol`` gains from a preset (``suite``) and repeats; none for a plain sweep."""
    record: dict[str, Any] = {"suite": config.data.protocol} if config.data.protocol != "none" else {}
    if config.data.repeats > 1:
        record |= {"repeats": config.data.repeats, "repeat": repeat}
    return record
