"""Named training protocols for trained heads: optimiser, lr and wd grids, length, batch, warm-up, holdout.

A recipe is what a paper or eval suite means by "the protocol"; ``epcache probe --recipe NAME``
selects one and any explicit flag (``--lr``, ``--epochs``, ``--batch-size``, ...) overrides that
one field. The default, ``auto``, is not a paper's recipe: it is the protocol that works from 20
samples to ImageNet (a fused lr grid chosen on the holdout, a length floor in optimiser steps, a
batch that gives several steps per epoch). How a recipe adapts to a dataset is
:func:`epcache.probe.config.protocol.resolve_protocol`; this module only states the recipes.
"""

from __future__ import annotations

from dataclasses import dataclass

from epcache.errors import ConfigError

__all__ = ["RECIPES", "Recipe", "Regime", "format_recipes", "get_recipe"]

# DINOv2's linear eval grid (dinov2/eval/linear.py, `--learning-rates`), scaled by batch / 256.
_DINOV2_LRS = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1)
# auto: 12 AdamW learning rates over 3.7 decades (1-2-5 steps), all trained fused in one pass.
_AUTO_LRS = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1, 2e-1, 5e-1)


@dataclass(frozen=True)
class Regime:
    """Where a recipe was designed to work; outside it the plan says so in one line, or refuses.

    A recipe's numbers are tuned for a scale: the blr rule ties the lr to the batch, so a batch that
    shrinks to fit a small dataset shrinks the lr with it, and a length in epochs is few optimiser
    steps on few samples. Only values the recipe chose are judged: an explicit ``--lr``, ``--epochs``
    or ``--min-steps`` is the user's decision, not the recipe leaving its regime.
    """

    lr: tuple[float, float]  # peak lrs it was designed for: out when the whole grid lies below or above
    min_steps: int  # fewest optimiser steps its length was designed for
    refuse: bool = False  # a recipe-chosen lr outside ``lr`` is an error unless --lr / --blr is given
    fix_lr: float | None = None  # the --lr the refusal and the line suggest (measured to learn)


@dataclass(frozen=True)
class Recipe:
    """One documented protocol; every field is overridable by the matching ``epcache probe`` flag."""

    name: str
    source: str  # where the protocol comes from (paper / code path)
    summary: str  # one line for `epcache recipes`
    optimizer: str  # lars | sgd | adamw
    momentum: float | None  # SGD/LARS momentum; None: the optimiser's default
    betas: tuple[float, float] | None  # AdamW betas; None: torch's (0.9, 0.999)
    lr: tuple[float, ...]  # absolute peak lrs (a grid trained fused); empty when blr is used
    blr: tuple[float, ...]  # base lrs: lr = blr x batch / 256 (EP/MAE and DINOv2 rule)
    wd: tuple[float, ...]  # weight-decay grid
    batch_size: int  # the recipe's batch; smaller datasets get a smaller one (protocol.py)
    epochs: int  # evaluation epochs: the holdout picks one of these
    min_steps: int  # floor on optimiser steps (0: none); met by making an epoch several passes
    warmup_epochs: float | None  # warm-up in epochs (ep-paper); scaled when --epochs changes
    warmup_fraction: float | None  # warm-up as a fraction of all steps
    holdout: float  # stratified fraction of train that selects epoch and config
    regime: Regime

    def lr_rule(self) -> str:
        return "blr" if self.blr else "absolute"


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            name="auto",
            source="epcache default (DINOv2-style lr grid chosen on a holdout; length floored in steps)",
            summary="AdamW, 12 lrs 1e-4..0.5 fused, 20 epochs but >= 1000 steps, batch <= 1024 with >= 8 "
            "steps/epoch, warm-up 10% of steps, holdout 10% (>= 1 per class)",
            optimizer="adamw",
            momentum=None,
            betas=None,
            lr=_AUTO_LRS,
            blr=(),
            wd=(0.0,),
            batch_size=1024,
            epochs=20,
            min_steps=1000,
            warmup_epochs=None,
            warmup_fraction=0.1,
            holdout=0.1,
            regime=Regime(lr=(1e-4, 0.5), min_steps=1000),
        ),
        Recipe(
            name="ep-paper",
            source="Psomas et al., ICLR 2026, EP code main_linprobe.py (docs/EP_SPEC.md section 4.1)",
            summary="LARS (momentum 0.9), blr 0.1 (lr = blr x batch / 256), batch 4096, 90 epochs, warm-up 10 "
            "epochs, cosine to 0, wd 0, holdout 10%",
            optimizer="lars",
            momentum=0.9,
            betas=None,
            lr=(),
            blr=(0.1,),
            wd=(0.0,),
            batch_size=4096,
            epochs=90,
            min_steps=0,
            warmup_epochs=10.0,
            warmup_fraction=None,
            holdout=0.1,
            # blr 0.1 from batch 256 to MAE's 16384; under 2048 training samples the batch shrinks below 256
            # and LARS barely moves (180 samples: batch 16, lr 0.00625, chance accuracy; --lr 0.1 with
            # --min-steps 2000 learns the same data to 99%)
            regime=Regime(lr=(0.1, 6.4), min_steps=2000, refuse=True, fix_lr=0.1),
        ),
        Recipe(
            name="dinov2-linear",
            source="Oquab et al. 2023, dinov2/eval/linear.py (13 lrs x batch / 256, SGD momentum 0.9, cosine, no wd)",
            summary="SGD momentum 0.9, 13 lrs 1e-5..0.1 x batch / 256 fused, no wd, no warm-up, batch 1024, "
            "10 epochs but >= 1250 steps, holdout 10% (DINOv2 itself selects on val: see `oracle`)",
            optimizer="sgd",
            momentum=0.9,
            betas=None,
            lr=(),
            blr=_DINOV2_LRS,
            wd=(0.0,),
            batch_size=1024,
            epochs=10,
            min_steps=1250,
            warmup_epochs=None,
            warmup_fraction=0.0,
            holdout=0.1,
            regime=Regime(lr=(0.025, 25.6), min_steps=1250),  # the grid's top lr from batch 64 up
        ),
        Recipe(
            name="capi-attentive",
            source="Darcet et al. 2025 (CAPI, arXiv 2502.08769), attentive-probe protocol: AdamW (0.9, 0.95), "
            "lr x wd grid, warm-up 10% of steps",
            summary="AdamW betas (0.9, 0.95), lrs {1e-4..5e-3} x wd {1e-4, 1e-2, 0.1} fused, batch 1024, 20 epochs "
            "but >= 1000 steps, warm-up 10% of steps, holdout 10%",
            optimizer="adamw",
            momentum=None,
            betas=(0.9, 0.95),
            lr=(1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3),
            blr=(),
            wd=(1e-4, 1e-2, 0.1),
            batch_size=1024,
            epochs=20,
            min_steps=1000,
            warmup_epochs=None,
            warmup_fraction=0.1,
            holdout=0.1,
            regime=Regime(lr=(1e-4, 5e-3), min_steps=1000),
        ),
    )
}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``.

    Raises:
        ConfigError: no such recipe (the message lists them).
    """
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(
            f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)} (`epcache recipes` describes them)"
        ) from None


def format_recipes() -> str:
    """The table `epcache recipes` prints: name, what it sets, and its source."""
    lines = []
    for r in RECIPES.values():
        lines.append(f"{r.name}{'  (default)' if r.name == 'auto' else ''}")
        lines.append(f"  {r.summary}")
        lines.append(f"  source: {r.source}")
        g = r.regime
        lines.append(f"  regime: peak lr {g.lr[0]:g}..{g.lr[1]:g}, >= {g.min_steps} steps"
                     + (" (refused outside its lr range unless --lr or --blr is given)" if g.refuse else ""))
    return "\n".join(lines)
