"""What makes two results rows the same board entry, and the columns of ``board.csv``.

Kept in one small module because three readers depend on it: the board writer, the
``--check-anchor`` guard of ``epcache probe`` (which reads lines of an earlier board) and the
EP-results export. A board row is one (store, layer/input, head family, protocol) cell with
its best config by the one ranking (:mod:`epcache.probe.results.ranking`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["BOARD_COLUMNS", "BOARD_KEY", "PER_CONFIG_PROTOCOL_KEYS", "head_family", "input_label", "protocol_key"]

# The protocol fingerprint records the config's own optimisation point and input too; a board cell
# compares configs of one protocol, so those are left out of its key (they are the swept axes).
PER_CONFIG_PROTOCOL_KEYS = frozenset(
    {"lr", "blr", "wd", "momentum", "betas", "tokens", "layer_mix", "layers"}
)

# A solver row's config minus these is its protocol: the head, its options and input are the swept axes.
SOLVER_CONFIG_AXES = frozenset({"head", "kind", "head_options", "layer", "tokens", "seed", "try"})

BOARD_KEY = ("store_provenance", "input", "head_family", "protocol")
"""Columns that identify a board row: at most one row per key."""

BOARD_COLUMNS = (
    "encoder",  # the timm model name recorded in the store
    "weights",  # where the store's weights came from (path, HF tag or "random-init")
    "store",  # path of the train store as recorded in the run
    "store_provenance",  # the store's provenance hash (sha256 hex)
    "input",  # layer/input label: input_label(row)
    "head_family",  # head_family(row): linear, ep, mhca, knn, logreg, ...
    "protocol",  # protocol_key(row): 16 hex
    "config",  # the best seed group's config name, seed removed
    "seeds",  # rows averaged into it (head-init seeds or few-shot tries)
    "eval_top1",  # mean eval top-1 of the selected config, in [0, 1]
    "eval_lo",  # its 95% interval (Wilson for one seed, seeded bootstrap of the mean otherwise)
    "eval_hi",
    "oracle_top1",  # the ranking module's oracle for that config (seed mean of per-seed max over epochs)
    "oracle_std",
    "eval_n",  # images in the eval split
    "selection",  # the selection rule that ran (protocol.selection_rule)
    "params",  # trainable parameters of the head
    "run",  # the run directory the row came from
    "holdout_top1",  # seed-mean holdout top-1 of the selected config (what ranked it; empty without a holdout)
    "miou",  # dense rows: eval mIoU of the config the holdout mIoU selected, in [0, 1]; empty for classification
    "pixel_acc",  # dense rows: its eval pixel accuracy; empty for classification
)


def protocol_key(row: Mapping[str, Any]) -> str:
    """16 hex of the row's protocol without the config's own axes: rows of one sweep share it.

    A solver row selected on the holdout records no ``protocol``: its config's data settings
    (holdout, shots, data seed, fraction, dtype, splits) stand for it.
    """
    if "protocol" in row:
        proto = {k: v for k, v in row["protocol"].items() if k not in PER_CONFIG_PROTOCOL_KEYS}
    else:
        proto = {k: v for k, v in row["config"].items() if k not in SOLVER_CONFIG_AXES}
    text = json.dumps(proto, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def head_family(row: Mapping[str, Any]) -> str:
    """The head kind (``config.kind``): what the board's columns group by."""
    return str(row["config"]["kind"])


def input_label(row: Mapping[str, Any]) -> str:
    """``L11 cls``, ``L8+L11 patch (concat)``, ``pooled cls``, ``L5 mlp_hidden cls``: the layer(s), the tap
    (when not the block output: a tap's rows are board rows of their own) and the tokens a row read."""
    cfg = row["config"]
    inp = row.get("input") or {}
    layers = inp.get("layers") or [cfg.get("layer")]
    mix = inp.get("layer_mix", "none")
    where = "+".join("pooled" if layer in (None, -1) else f"L{layer}" for layer in layers)
    tap = (row.get("data") or {}).get("tap")
    if tap not in (None, "block"):
        where += f" {tap}"
    tokens = inp.get("tokens") or cfg.get("tokens") or "?"
    return f"{where} {tokens}" + ("" if mix in (None, "none") else f" ({mix})")
