"""One forward pass, every requested layer, as ``[B, T, D]`` tokens (prefix first, then patches).

Token models (ViT, BEiT, EVA: timm ``forward_intermediates`` with ``return_prefix_tokens``)
return per-block sequences; their prefix (CLS, registers) is concatenated before the patch
tokens, which is exactly the block output. Spatial models (convnets, Swin, Hiera) return NCHW
stage maps that are flattened row-major into ``H*W`` tokens without prefix.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from epcache._layerspec import parse_layers
from epcache.errors import ConfigError, ModelError
from epcache.store import TokenLayout

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["ModelGeometry", "TokenExtractor", "count_layers", "inspect_model", "model_kind"]

ModelKind = Literal["tokens", "spatial"]


@dataclass(frozen=True, slots=True)
class ModelGeometry:
    """What one forward produces for the requested layers."""

    kind: ModelKind  # "tokens": ViT-like with prefix tokens; "spatial": NCHW maps flattened
    num_layers: int  # layers the model exposes (blocks for ViTs, stages for convnets)
    layers: tuple[int, ...]  # requested, absolute and sorted
    layout: TokenLayout  # of the last requested layer
    dim: int  # D of the last requested layer
    # (grid, D) per requested layer when they differ (a convnet's stages); empty when all are alike
    layer_shapes: dict[int, tuple[tuple[int, int], int]] = field(default_factory=dict)

    def layer_shape(self, layer: int) -> tuple[int, int]:
        """(T, D) of one requested layer's tokens."""
        if layer in self.layer_shapes:
            (h, w), dim = self.layer_shapes[layer]
            return self.layout.num_prefix + h * w, dim
        return self.layout.num_tokens, self.dim


def model_kind(model: nn.Module) -> ModelKind:
    """Whether ``forward_intermediates`` gives token sequences with prefix tokens or NCHW maps.

    Raises:
        ModelError: the model has no ``forward_intermediates`` (timm's multi-layer API).
    """
    fi = getattr(model, "forward_intermediates", None)
    if fi is None:
        raise ModelError(
            f"timm model {type(model).__name__} has no forward_intermediates(), so epcache cannot take "
            "its intermediate layers; choose a ViT/ConvNeXt/ResNet-family model"
        )
    return "tokens" if "return_prefix_tokens" in inspect.signature(fi).parameters else "spatial"


def count_layers(model: nn.Module) -> int:
    """Layers ``forward_intermediates`` indexes: blocks for token models, feature stages otherwise."""
    if model_kind(model) == "tokens" and hasattr(model, "blocks"):
        return len(model.blocks)  # type: ignore[arg-type]
    info = getattr(model, "feature_info", None)
    if not info:
        raise ModelError(f"cannot tell how many layers {type(model).__name__} has (no feature_info)")
    return len(info)


def inspect_model(
    model: nn.Module,
    *,
    layers_spec: str | None,
    input_size: tuple[int, int, int],
    name: str,
) -> ModelGeometry:
    """Resolve the layer spec and the token layout with one shape-only forward.

    Run it on a ``meta``-device model: no weights, no compute, exact shapes. ``layers_spec``
    None means every layer for token models and the last stage for spatial models. Layers of
    different widths or grids (a convnet's stages, ``--layers all``) go into one store with
    per-layer shapes (cache_layout.md §2.1 ``layer_shapes``), from one forward pass.

    Raises:
        UnknownLayerError: a requested layer outside the model.
        ConfigError: layers with different numbers of prefix tokens (no timm model has them).
    """
    import torch

    kind = model_kind(model)
    n = count_layers(model)
    spec = layers_spec if layers_spec is not None else ("all" if kind == "tokens" else "last")
    layers = parse_layers(spec, n, model=name)
    device = next(iter(model.parameters())).device
    x = torch.zeros((1, *input_size), device=device)
    extra = {"return_prefix_tokens": True} if kind == "tokens" else {}
    with torch.inference_mode():
        outs = model.forward_intermediates(  # type: ignore[operator]
            x,
            indices=list(layers),
            norm=False,
            stop_early=True,
            output_fmt="NCHW",
            intermediates_only=True,
            **extra,
        )
    shapes: list[tuple[int, int, int, int]] = []  # (prefix, D, H, W) per layer
    for out in outs:
        spatial, prefix = out if isinstance(out, tuple) else (out, None)
        _, d, h, w = spatial.shape
        shapes.append((0 if prefix is None else int(prefix.shape[1]), int(d), int(h), int(w)))
    if len({p for p, _, _, _ in shapes}) != 1:
        raise ConfigError(
            f"layers {list(layers)} of {name} have different numbers of prefix tokens; extract them apart"
        )
    num_prefix, dim, h, w = shapes[-1]
    per_layer: dict[int, tuple[tuple[int, int], int]] = {}
    if len(set(shapes)) != 1:
        per_layer = {layer: ((sh, sw), sd) for layer, (_, sd, sh, sw) in zip(layers, shapes, strict=True)}
    has_cls = getattr(model, "cls_token", None) is not None and num_prefix > 0
    layout = TokenLayout(
        num_prefix=num_prefix,
        cls_index=0 if has_cls else None,  # timm puts CLS first, then registers
        num_registers=int(getattr(model, "num_reg_tokens", 0) or 0) if kind == "tokens" else 0,
        grid=(h, w),
    )
    return ModelGeometry(kind=kind, num_layers=n, layers=layers, layout=layout, dim=dim, layer_shapes=per_layer)


class TokenExtractor:
    """Callable: images ``[B, 3, H, W]`` -> one ``[B, T, D]`` tensor per requested layer.

    Every layer comes from the same single forward (``forward_intermediates`` with
    ``stop_early``, so blocks after the deepest requested one are not even run).
    """

    def __init__(self, model: nn.Module, geometry: ModelGeometry, *, final_norm: bool) -> None:
        self.model = model
        self.geometry = geometry
        self.final_norm = final_norm

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        import torch

        g = self.geometry
        if g.kind == "tokens":
            outs = self.model.forward_intermediates(  # type: ignore[operator]
                x,
                indices=list(g.layers),
                return_prefix_tokens=True,
                norm=self.final_norm,
                stop_early=True,
                output_fmt="NLC",
                intermediates_only=True,
            )
            tokens = []
            for out in outs:
                if isinstance(out, tuple):  # (patches (B, h*w, D), prefix (B, P, D))
                    tokens.append(torch.cat([out[1], out[0]], dim=1))
                else:
                    tokens.append(out)
            return tokens
        outs = self.model.forward_intermediates(  # type: ignore[operator]
            x,
            indices=list(g.layers),
            norm=self.final_norm,
            stop_early=True,
            output_fmt="NCHW",
            intermediates_only=True,
        )
        return [o.flatten(2).transpose(1, 2) for o in outs]  # (B, D, H, W) -> (B, H*W, D), row-major
