"""The model's own pooled output, stored beside the tokens when ``--pooled`` is given.

timm's ``forward_head(pre_logits=True)`` is what the model itself feeds its classifier: the MAP
head's output for SigLIP, the projection input for CLIP, the final-norm CLS (or GAP with
``fc_norm``) for most ViTs, the pooled and normalised map for convnets. The layers and the pooled
vector come from ONE forward: ``forward_intermediates(..., intermediates_only=False)`` runs to
the end and returns the final features, so nothing is computed twice. It is opt-in because
without it extraction stops after the deepest requested block (``stop_early``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from epcache.errors import ConfigError
from epcache.extract._forward import ModelGeometry
from epcache.store import FeatureStore

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["POOLED_KEY", "PooledTokenExtractor", "ensure_pooled", "pooled_width"]

POOLED_KEY = -1  # key of the pooled rows in a writer block (written before the layers: sorted first)


def pooled_width(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """Width of ``forward_head(pre_logits=True)``, from a shape-only forward (use a meta-device model)."""
    import torch

    device = next(iter(model.parameters())).device
    with torch.inference_mode():
        out = model.forward_head(model.forward_features(torch.zeros((1, *input_size), device=device)), pre_logits=True)  # type: ignore[operator]
    if out.ndim != 2:
        raise ConfigError(f"{type(model).__name__}.forward_head(pre_logits=True) gives shape {tuple(out.shape)}, "
                          "not one vector per image; extract without --pooled")
    return int(out.shape[1])


class PooledTokenExtractor:
    """Callable: images -> (one ``[B, T, D]`` tensor per requested layer, pooled ``[B, D_pooled]``)."""

    def __init__(self, model: nn.Module, geometry: ModelGeometry, *, final_norm: bool) -> None:
        self.model = model
        self.geometry = geometry
        self.final_norm = final_norm

    def __call__(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        import torch

        g = self.geometry
        tokens_model = g.kind == "tokens"
        extra = {"return_prefix_tokens": True} if tokens_model else {}
        final, outs = self.model.forward_intermediates(  # type: ignore[operator]
            x,
            indices=list(g.layers),
            norm=self.final_norm,
            stop_early=False,  # run to the end: the head needs the final features
            output_fmt="NLC" if tokens_model else "NCHW",
            intermediates_only=False,
            **extra,
        )
        pooled = self.model.forward_head(final, pre_logits=True)  # type: ignore[operator]
        layers = []
        for out in outs:
            if isinstance(out, tuple):  # (patches, prefix): prefix first, as TokenExtractor stores it
                layers.append(torch.cat([out[1], out[0]], dim=1))
            elif tokens_model:
                layers.append(out)
            else:
                layers.append(out.flatten(2).transpose(1, 2))  # (B, D, H, W) -> (B, H*W, D)
        return layers, pooled


def ensure_pooled(store: FeatureStore, splits: Iterable[str], dim: int | None, *, resumed: bool) -> None:
    """Create the ``pooled`` arrays of ``splits`` (dim given), or refuse a resume that would mix stores.

    Raises:
        ConfigError: resuming with ``--pooled`` a store whose blocks were written without it, or
            resuming without ``--pooled`` a store that holds it (new blocks would lack it).
    """
    names = list(splits)
    if dim is None:
        if resumed and store.pooled_dim is not None:
            raise ConfigError(f"{store.location} holds the model's pooled output; resume it with --pooled")
        return
    for name in names:
        if store.has_pooled(name):
            continue
        written = store.split(name).num_blocks - len(store.missing_blocks(name))
        if resumed and written:
            raise ConfigError(
                f"{store.location}: split {name!r} already has {written} block(s) extracted without --pooled; "
                "resume without --pooled, or re-extract with --overwrite --pooled"
            )
        store.add_pooled(name, dim)
