"""One probe configuration (:class:`RunSpec`) and the settings every config of a sweep shares.

A config's ``id`` hashes everything that changes its numbers (the store's provenance and the
resolved protocol included), so a config run alone or inside any sweep has the same id and a run
directory can skip what it already holds; ``seed_group`` hashes the same minus the head-init seed,
so rows that are seeds of one config, and only those, are averaged.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from epcache.probe.config.inputs import input_key, jsonable, read_layers
from epcache.probe.config.protocol import Protocol, optimizer_settings
from epcache.probe.heads.spec import HeadSpec

__all__ = ["RunSpec", "SweepSettings"]


@dataclass(frozen=True, slots=True)
class SweepSettings:
    """Settings shared by every config of one sweep; part of each config's id and of every row."""

    protocol: Protocol
    data_seed: int
    holdout: float  # requested fraction; the rule and sizes are in the rows' data section
    shots: int | None
    fraction: float | None
    dtype: str
    train_split: str
    eval_split: str
    store_provenance: str  # provenance key of the train store
    eval_provenance: str  # provenance key of the store holding eval_split
    amp: str = "none"  # resolved autocast: none | bf16 (epcache.probe.train.precision)
    amp_rule: str = "as requested"  # how it was chosen ("auto: bf16 autocast on CUDA", ...)
    refit: bool = False  # final heads retrained on train + holdout for their selected steps (only with a holdout)
    selection: str = "holdout"  # the resolved selection rule: holdout | cvK | none (epcache.probe.data.folds)
    suite: str = "none"  # the preset that fixed the rows and selection (epcache.probe.config.suite)

    @property
    def epochs(self) -> int:
        return self.protocol.epochs

    @property
    def batch_size(self) -> int:
        return self.protocol.batch_size

    def to_json(self) -> dict[str, Any]:
        p = self.protocol.to_json()
        for grid_axis in ("lrs", "wd", "optimizers"):  # each run carries its own point of these axes
            p.pop(grid_axis)
        amp = {"amp": self.amp} if self.amp != "none" else {}  # float32 configs keep the ids they had
        refit = {"refit": True} if self.refit else {}  # selection-model configs keep the ids they had
        if self.selection != "holdout":
            refit["selection"] = self.selection
        if self.suite != "none":  # vtab1k draws other rows than holdout 0.2 would: its own ids
            refit["suite"] = self.suite
        return {
            **amp,
            **refit,
            "protocol": p,
            "data_seed": self.data_seed,
            "holdout": self.holdout,
            "shots": self.shots,
            "fraction": self.fraction,
            "dtype": self.dtype,
            "train_split": self.train_split,
            "eval_split": self.eval_split,
            "store_provenance": self.store_provenance,
            "eval_provenance": self.eval_provenance,
        }


@dataclass(frozen=True, slots=True)
class RunSpec:
    """One probe configuration of a sweep: a head, its input and its optimisation.

    ``seed`` only seeds the head's initial weights (drawn by ``create_head`` under
    ``torch.manual_seed(seed)``); the batch order depends on ``settings.data_seed`` alone, so a
    config trained alone and trained inside any sweep sees the same batches and gives the same
    weights.
    """

    head: HeadSpec
    layer: int  # the layer read; for a layer mix its last layer; -1 for tokens=pooled (no layer)
    tokens: str  # token source, epcache.probe.data.sources (cls, gap, cls+gap, pooled / patch, all, registers ...)
    optimizer: str
    lr: float  # absolute peak learning rate
    blr: float | None  # base lr it came from (lr = blr * batch / 256); None when lr was given directly
    wd: float
    seed: int
    settings: SweepSettings
    layer_mix: str = "none"  # none | concat | mean | tokens (layer mixes)
    mix_layers: tuple[int, ...] = ()  # the layers a mix reads, ascending (empty for none)
    id: str = field(init=False)
    name: str = field(init=False)
    seed_group: str = field(init=False)

    def __post_init__(self) -> None:
        tokens = "" if "tokens=" in self.head.name else f" {self.tokens}"
        where = f"layer={self.layer}"
        if self.layer_mix != "none":
            where = f"layers={','.join(map(str, self.mix_layers))} mix={self.layer_mix}"
        elif self.tokens == "pooled":
            where = "pooled"
        name = f"{self.head.name} {where}{tokens} lr={self.lr:.3g} wd={self.wd:g}"
        if self.optimizer != self.settings.protocol.recipe_optimizer:
            name += f" {self.optimizer}"
        object.__setattr__(self, "name", f"{name} seed={self.seed}")
        doc = {**self.hyperparameters(), "settings": self.settings.to_json()}
        object.__setattr__(self, "id", _digest(doc)[:16])
        doc["seed"] = None
        object.__setattr__(self, "seed_group", _digest(doc)[:16])

    @property
    def group_key(self) -> tuple[int, ...]:
        """Configs with the same key read the same layers and train in one pass (``()``: pooled output)."""
        return read_layers(self)

    @property
    def input_key(self) -> str:
        """How the head's input is derived from the group's batch: ``patch``, ``mean:patch`` ..."""
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
        opt = optimizer_settings(self.settings.protocol, self.optimizer)
        mix = {"layer_mix": self.layer_mix, "layers": list(self.mix_layers)} if self.layer_mix != "none" else {}
        return {
            "head": self.head.name,
            "kind": self.head.kind,
            "head_options": {k: jsonable(v) for k, v in self.head.params},
            "layer": self.layer,
            "tokens": self.tokens,
            "optimizer": self.optimizer,
            "momentum": opt["momentum"],
            "betas": None if opt["betas"] is None else list(opt["betas"]),
            "lr": self.lr,
            "blr": self.blr,
            "wd": self.wd,
            "seed": self.seed,
            **mix,  # only for mixes: ids of single-layer configs stay what they were
        }


def _digest(doc: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
