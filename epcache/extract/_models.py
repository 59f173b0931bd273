"""Backbone names: the short-alias registry users type, and resolution to a timm name.

Inside epcache a backbone is its full timm name with tag (``vit_base_patch16_224.mae``); the
aliases (``mae_vitb``) are resolved once, here, and ``epcache models`` prints what each maps to.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from epcache.errors import ModelError

__all__ = ["ModelAlias", "ResolvedModel", "list_model_aliases", "resolve_model"]


@dataclass(frozen=True, slots=True)
class ModelAlias:
    """A short name for a timm backbone, with what a user should know before extracting it."""

    alias: str  # what users type, e.g. "mae_vitb"
    timm_name: str  # full timm name, with tag when timm has the weights
    family: str  # pre-training family shown by `epcache models`
    timm_weights: bool = True  # False: timm has no such weights, a --weights checkpoint is required
    note: str = ""  # one line: resolution caveats, deviations from the paper protocol


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """A model argument after alias resolution."""

    requested: str  # what the user passed
    timm_name: str  # timm name (with tag if one was given or implied by the alias)
    architecture: str  # timm name without tag, what `timm.create_model` builds
    tag: str  # pretrained tag, "" if none was given
    alias: ModelAlias | None  # the alias entry, if `requested` was one


_ALIASES: tuple[ModelAlias, ...] = (
    ModelAlias(
        "mae_vits",
        "vit_small_patch16_224",
        "MAE",
        timm_weights=False,
        note="timm has no MAE ViT-S/16 weights: pass --weights with the MAE checkpoint",
    ),
    ModelAlias("mae_vitb", "vit_base_patch16_224.mae", "MAE"),
    ModelAlias("mae_vitl", "vit_large_patch16_224.mae", "MAE"),
    ModelAlias("mae_vith", "vit_huge_patch14_224.mae", "MAE"),
    ModelAlias("dino_vits", "vit_small_patch16_224.dino", "DINO"),
    ModelAlias("dino_vitb", "vit_base_patch16_224.dino", "DINO"),
    ModelAlias(
        "dinov2_vits",
        "vit_small_patch14_dinov2.lvd142m",
        "DINOv2",
        note="timm default input is 518px; the EP paper probes at 224 (--img-size 224)",
    ),
    ModelAlias(
        "dinov2_vitb",
        "vit_base_patch14_dinov2.lvd142m",
        "DINOv2",
        note="timm default input is 518px; the EP paper probes at 224 (--img-size 224)",
    ),
    ModelAlias(
        "dinov2_vitl",
        "vit_large_patch14_dinov2.lvd142m",
        "DINOv2",
        note="timm default input is 518px; the EP paper probes at 224 (--img-size 224)",
    ),
    ModelAlias("dinov2_vitg", "vit_giant_patch14_dinov2.lvd142m", "DINOv2", note="timm default input is 518px"),
    ModelAlias(
        "dinov2_vits_reg",
        "vit_small_patch14_reg4_dinov2.lvd142m",
        "DINOv2",
        note="4 register tokens follow CLS; timm default input is 518px",
    ),
    ModelAlias(
        "dinov2_vitb_reg",
        "vit_base_patch14_reg4_dinov2.lvd142m",
        "DINOv2",
        note="4 register tokens follow CLS; timm default input is 518px",
    ),
    ModelAlias(
        "dinov2_vitl_reg",
        "vit_large_patch14_reg4_dinov2.lvd142m",
        "DINOv2",
        note="4 register tokens follow CLS; timm default input is 518px",
    ),
    ModelAlias(
        "dinov2_vitg_reg",
        "vit_giant_patch14_reg4_dinov2.lvd142m",
        "DINOv2",
        note="4 register tokens follow CLS; timm default input is 518px",
    ),
    ModelAlias(
        "clip_vitb16",
        "vit_base_patch16_clip_224.openai",
        "CLIP",
        note="timm tower (unprojected tokens); natively QuickGELU, timm runs GELU",
    ),
    ModelAlias(
        "siglip_vitb16",
        "vit_base_patch16_siglip_224.webli",
        "SigLIP",
        note="no CLS token (attention-pool head): probe GAP or patches",
    ),
    ModelAlias(
        "beitv2_vitb",
        "beitv2_base_patch16_224.in1k_ft_in1k",
        "BEiTv2",
        note="timm has only fine-tuned BEiTv2 weights; pass --weights for the pre-trained checkpoint",
    ),
    ModelAlias("eva02_vitb", "eva02_base_patch14_224.mim_in22k", "EVA-02", note="MIM pre-trained, not fine-tuned"),
    ModelAlias("deit3_vitb", "deit3_base_patch16_224.fb_in1k", "DeiT III", note="supervised ImageNet-1k"),
)
_BY_ALIAS: dict[str, ModelAlias] = {a.alias: a for a in _ALIASES}


def list_model_aliases() -> list[ModelAlias]:
    """The alias registry in display order (what `epcache models` prints)."""
    return list(_ALIASES)


def resolve_model(name: str) -> ResolvedModel:
    """Resolve an alias or a timm name (with or without tag) without building anything.

    Raises:
        ModelError: neither an alias nor a timm architecture, or a tag timm does not know; the
            message lists the closest names.
    """
    import timm

    requested = name.strip()
    alias = _BY_ALIAS.get(requested)
    timm_name = alias.timm_name if alias else requested
    arch, _, tag = timm_name.partition(".")
    if not timm.is_model(arch):
        raise ModelError(f"unknown model {requested!r}; {_suggest(requested)}")
    if tag and timm_name not in timm.list_pretrained(f"{arch}.*"):
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{arch}.*")]
        known = ", ".join(tags[:12]) or "none"
        raise ModelError(
            f"timm has no weights tag {tag!r} for {arch}; known tags: {known}. "
            f"Pass `{arch}` with --weights for a local checkpoint"
        )
    return ResolvedModel(requested=requested, timm_name=timm_name, architecture=arch, tag=tag, alias=alias)


def _suggest(name: str) -> str:
    import timm

    candidates = [*_BY_ALIAS, *timm.list_models(), *timm.list_pretrained()]
    close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return f"{hint}Use an alias from `epcache models` or any name from `timm.list_models()`"
