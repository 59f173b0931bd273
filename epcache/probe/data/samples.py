"""Which stored rows a run trains, selects and evaluates on, resolved once before any training.

Everything here is checked before a single step: completeness of the blocks the sweep reads,
labels against the class list, the holdout and low-shot subsets, and that a separate eval store
holds features of the same backbone and preprocessing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from epcache.errors import ConfigError, IncompleteStoreError, ProvenanceMismatchError
from epcache.probe.config.probe_config import ProbeConfig
from epcache.probe.config.suite import VTAB1K, VTAB_ROWS, VTAB_TRAIN, check_suite_store
from epcache.probe.data.select import HOLDOUT_RULE, VTAB_RULE, check_labels, split_train, split_vtab
from epcache.store import FeatureStore, class_map_fingerprint
from epcache.store.describe.diff import describe_differences

__all__ = ["RunData", "check_class_maps", "check_compatible", "resolve_rows"]


@dataclass(frozen=True)
class RunData:
    """Everything about the rows of the run, resolved once before training."""

    train_labels: np.ndarray
    eval_labels: np.ndarray
    train_rows: np.ndarray
    holdout_rows: np.ndarray
    eval_rows: np.ndarray
    excluded_train: int
    excluded_eval: int
    holdout: float  # the requested fraction (the per-class rule is HOLDOUT_RULE)
    notes: tuple[str, ...]
    pool_rows: np.ndarray | None = None  # train rows outside the holdout before a low-shot subset
    folds: tuple[np.ndarray, ...] = ()  # cross-validation: disjoint stratified parts of train_rows (data/folds.py)
    holdout_rule: str = HOLDOUT_RULE  # how holdout_rows were drawn (a preset's fixed counts: VTAB_RULE)

    def shot_free(self) -> RunData:
        """The same resolution without the low-shot subset: the rows solver heads draw their few-shot sets from."""
        if self.pool_rows is None:
            return self
        return dataclasses.replace(self, train_rows=self.pool_rows)

    def to_json(self, num_classes: int) -> dict[str, Any]:
        """The data section of a results row: sizes and the holdout rule that produced them."""
        cv = {"folds": [len(f) for f in self.folds]} if self.folds else {}  # sizes of the cross-validation folds
        rule = self.holdout_rule if self.holdout > 0 else "none (last epoch kept)"
        return {
            "num_classes": num_classes,
            "num_train": len(self.train_rows),
            "num_holdout": len(self.holdout_rows),
            "num_eval": len(self.eval_rows),
            "holdout_fraction": self.holdout,
            "holdout_rule": f"none ({len(self.folds)}-fold cross-validation)" if self.folds else rule,
            "excluded_train": self.excluded_train,
            "excluded_eval": self.excluded_eval,
            **cv,
        }


def resolve_rows(
    config: ProbeConfig,
    store: FeatureStore,
    eval_store: FeatureStore,
    layers: Sequence[int],
    num_classes: int,
    *,
    holdout: float,
) -> RunData:
    """The rows of the run, from the resolved config and holdout fraction (never the raw request).

    Raises:
        IncompleteStoreError: blocks never written (unless ``allow_incomplete``).
        CorruptStoreError: labels outside the class list.
        ConfigError: an empty split or no usable training sample.
    """
    notes: list[str] = []
    missing_rows: dict[str, np.ndarray] = {}
    problems = []
    inputs = config.inputs
    for role, st, split in (("train", store, inputs.train_split), ("eval", eval_store, inputs.eval_split)):
        n = st.split(split).num_samples
        if n == 0:
            raise ConfigError(f"{st.location}: split {split!r} is empty")
        bad = np.zeros(n, bool)
        for layer in layers:
            blocks = st.missing_blocks(split, layer)
            if blocks:
                problems.append(f"{st.location} split {split!r} layer {layer}: blocks {_short(blocks)} not written")
                for b in blocks:
                    lo, hi = st.block_range(split, b)
                    bad[lo:hi] = True
        missing_rows[role] = bad
    if problems and not config.inputs.allow_incomplete:
        raise IncompleteStoreError(
            "the store is incomplete: " + "; ".join(problems) + ". Finish the extraction (run `epcache extract` "
            "again to resume it) or pass --allow-incomplete to train and evaluate on the written blocks only"
        )
    if problems:
        notes.append("allow_incomplete: skipping rows of unwritten blocks: " + "; ".join(problems))
    train_labels = store.read_labels(config.inputs.train_split)
    eval_labels = eval_store.read_labels(config.inputs.eval_split)
    train_ok = check_labels(train_labels, num_classes, split=config.inputs.train_split, where=store.location)
    eval_ok = check_labels(eval_labels, num_classes, split=config.inputs.eval_split, where=eval_store.location)
    excluded_train, excluded_eval = int((~train_ok).sum()), int((~eval_ok).sum())
    for n_ex, split in ((excluded_train, config.inputs.train_split), (excluded_eval, config.inputs.eval_split)):
        if n_ex:
            notes.append(f"split {split!r}: {n_ex} sample(s) labelled -1 (skipped at extraction) are excluded")
    train_ok &= ~missing_rows["train"]
    eval_ok &= ~missing_rows["eval"]
    if not eval_ok.any():
        raise ConfigError(f"split {config.inputs.eval_split!r} has no usable samples in the written blocks")
    vtab = config.data.protocol == VTAB1K and holdout > 0  # holdout 0: the rows cvK / auto would fit (unused)
    if vtab:
        check_suite_store(config, int(train_ok.sum()))
        subsets = split_vtab(train_labels, train_ok, rows=VTAB_ROWS, holdout=VTAB_ROWS - VTAB_TRAIN,
                             seed=config.data.data_seed)
    else:
        subsets = split_train(
            train_labels,
            train_ok,
            classes=store.split(config.inputs.train_split).classes,
            holdout=holdout,
            seed=config.data.data_seed,
            shots=config.data.shots,
            fraction=config.data.fraction,
        )
    if len(subsets.train) == 0:
        raise ConfigError(f"split {config.inputs.train_split!r} has no usable training samples")
    notes.extend(subsets.notes)
    return RunData(
        train_labels=train_labels,
        eval_labels=eval_labels,
        train_rows=subsets.train,
        holdout_rows=subsets.holdout,
        eval_rows=np.flatnonzero(eval_ok).astype(np.int64),
        holdout=holdout,
        excluded_train=excluded_train,
        excluded_eval=excluded_eval,
        notes=tuple(notes),
        pool_rows=subsets.pool,
        holdout_rule=VTAB_RULE if vtab else HOLDOUT_RULE,
    )


def check_compatible(store: FeatureStore, other: FeatureStore) -> None:
    """The eval store must hold tokens of the same backbone, weights, layout and preprocessing."""

    def fields(m: Any) -> dict[str, Any]:
        return {"backbone": m.backbone.name, "weights_sha256": m.backbone.weights_sha256, "dim": m.dim,
                "layout": dataclasses.asdict(m.layout), "final_norm": m.final_norm, "preprocessing": m.preprocessing}

    ours, theirs = fields(store.meta), fields(other.meta)
    if ours != theirs:  # field: this store's value vs the eval store's, shortened (the dicts are long)
        raise ProvenanceMismatchError(
            f"eval store {other.location} was not extracted like {store.location} "
            f"({describe_differences(ours, theirs)}); extract both with the same backbone, weights and preprocessing"
        )


def check_class_maps(train_split: str, train_classes: Sequence[str], eval_split: str,
                     eval_classes: Sequence[str]) -> None:
    """Refuse splits whose labels index different class lists: the eval would score against wrong names.

    The message names both class-map fingerprints (as results rows and ``epcache info`` record them)
    and the first index where the lists part, so a mapping mismatch is found without diffing by hand.
    """
    if tuple(train_classes) == tuple(eval_classes):
        return
    first = next((i for i, (a, b) in enumerate(zip(train_classes, eval_classes, strict=False)) if a != b), None)
    where = (f"first difference at index {first}: {train_classes[first]!r} vs {eval_classes[first]!r}"
             if first is not None else
             f"{len(train_classes)} vs {len(eval_classes)} classes, the first "
             f"{min(len(train_classes), len(eval_classes))} equal")
    raise ConfigError(
        f"split {train_split!r} (class map {class_map_fingerprint(train_classes)}) and {eval_split!r} (class map "
        f"{class_map_fingerprint(eval_classes)}) list different classes ({where}); labels would mean different "
        "classes. Extract both splits with the same class list"
    )


def _short(items: Sequence[int], limit: int = 8) -> str:
    head = ", ".join(map(str, items[:limit]))
    return f"[{head}{', ...' if len(items) > limit else ''}] ({len(items)} block(s))"
