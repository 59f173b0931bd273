"""``extract --taps``: activations inside blocks, captured by forward hooks during the one forward pass.

Each tap is a nested store (``<store>/taps/<name>/``, cache_layout.md §2.7) with the parent's splits,
ids, labels and chunking, so block ``b`` covers the same rows in every store and one forward fills
block ``b`` of all of them; resume works per store from its own records.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from epcache.errors import ConfigError, ProvenanceMismatchError, StoreNotFoundError
from epcache.extract._forward import ModelGeometry
from epcache.store import FeatureStore, StoreMeta, open_store
from epcache.store.describe.diff import describe_differences
from epcache.store.layout.light import light_layout
from epcache.store.layout.provenance import compute_provenance
from epcache.store.layout.taps import TapSpec, tap_location, tap_record
from epcache.store.open import create_tap_store

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["TapExtractor", "inspect_taps", "open_tap_stores", "tap_geometry", "tap_meta", "taps_key"]


def _modules(model: nn.Module, spec: TapSpec, layers: tuple[int, ...], *, name: str) -> list[nn.Module]:
    """The hooked module of every requested layer; a model without them is refused with the fix."""
    found: list[nn.Module] = []
    for layer in layers:
        path = spec.module.format(layer=layer)
        try:
            found.append(model.get_submodule(path))
        except AttributeError:
            raise ConfigError(
                f"--taps {spec.name}: {name} has no module {path} (a tap hooks a pre-norm ViT block "
                f"blocks[l] with attn, norm2 and mlp.act); drop {spec.name} from --taps or extract a ViT-family model"
            ) from None
    return found


def inspect_taps(
    model: nn.Module, geometry: ModelGeometry, specs: tuple[TapSpec, ...], *, input_size: tuple[int, int, int],
    name: str,
) -> dict[str, ModelGeometry]:
    """Each tap's geometry as the model gives it (before any pooling), from one hooked shape-only forward.

    Raises:
        ConfigError: a convnet, a block without the module, or a tap whose token count is not the block's.
    """
    import torch

    if not specs:
        return {}
    if geometry.kind != "tokens":
        raise ConfigError(
            f"--taps {specs[0].name}: {name} is a convnet (stage maps, no transformer blocks), so it has no "
            "activations inside blocks to tap; drop --taps or extract a ViT-family model"
        )
    extractor = TapExtractor(lambda x: _intermediates(model, geometry, x), model, geometry.layers, specs, name=name)
    device = next(iter(model.parameters())).device
    with torch.inference_mode():
        extractor(torch.zeros((1, *input_size), device=device))
    out: dict[str, ModelGeometry] = {}
    for spec in specs:
        dims = {}
        for layer, t in zip(geometry.layers, extractor.captured[spec.name], strict=True):
            if t.ndim != 3 or t.shape[1] != geometry.layer_shape(layer)[0]:
                raise ConfigError(
                    f"--taps {spec.name}: {name} layer {layer} gives shape {tuple(t.shape)} at "
                    f"{spec.module.format(layer=layer)}, not one token per block token; drop {spec.name} from --taps"
                )
            dims[layer] = int(t.shape[-1])
        last = dims[geometry.layers[-1]]
        shapes = {ly: (geometry.layout.grid, d) for ly, d in dims.items()} if len(set(dims.values())) > 1 else {}
        out[spec.name] = dataclasses.replace(geometry, dim=last, layer_shapes=shapes)
    return out


def _intermediates(model: nn.Module, geometry: ModelGeometry, x: torch.Tensor) -> Any:
    return model.forward_intermediates(  # type: ignore[operator]
        x, indices=list(geometry.layers), return_prefix_tokens=True, norm=False, stop_early=True,
        output_fmt="NLC", intermediates_only=True,
    )


def tap_geometry(raw: ModelGeometry, stored: ModelGeometry, spec: TapSpec, *, name: str) -> ModelGeometry:
    """A tap as stored: light for ``NAME:gap``, else pooled or light exactly as the block outputs are."""
    keep = spec.keep if spec.keep is not None else stored.layout.keep
    if keep is not None:
        layout = light_layout(raw.layout, keep, what=name)
        return dataclasses.replace(raw, layout=layout, layer_shapes={ly: ((1, 1), d) for ly, (_, d) in
                                                                     raw.layer_shapes.items()})
    k = stored.layout.pool_patches
    shapes = {ly: ((h // k, w // k), d) for ly, ((h, w), d) in raw.layer_shapes.items()}
    return dataclasses.replace(raw, layout=stored.layout, layer_shapes=shapes)


def taps_key(specs: tuple[TapSpec, ...], geometries: Mapping[str, ModelGeometry]) -> dict[str, Any] | None:
    """The parent document's ``taps`` key; None (no key at all) for a store without taps."""
    if not specs:
        return None
    return {s.name: {"dim": geometries[s.name].dim, "keep": list(s.keep) if s.keep else None} for s in specs}


def tap_meta(parent: StoreMeta, spec: TapSpec, g: ModelGeometry) -> StoreMeta:
    """A tap store's metadata: the parent's, with the tap's shapes and its ``tap`` record; no pooled output."""
    pre = {**parent.preprocessing, "token_source": f"forward hook on {spec.module} (tap {spec.name})"}
    return dataclasses.replace(
        parent, layout=g.layout, dim=g.dim, num_tokens=g.layout.num_tokens, layer_shapes=dict(g.layer_shapes),
        preprocessing=pre, taps=None, tap=tap_record(spec), dense=None,  # masks live in the parent only
    )


def open_tap_stores(
    store: FeatureStore, specs: tuple[TapSpec, ...], geometries: Mapping[str, ModelGeometry],
    split_spec: Callable[[str], Any], *, create: bool,
) -> dict[str, FeatureStore]:
    """Open (``create``: first create, or add missing splits to) the nested store of every tap.

    ``split_spec(name)`` gives the SplitSpec the parent was made with; a tap's splits get the parent's
    chunking, so write-blocks cover the same rows everywhere.

    Raises:
        ProvenanceMismatchError: a tap store made by another configuration sits where this one goes.
    """
    out: dict[str, FeatureStore] = {}
    try:
        for spec in specs:
            loc = tap_location(store.location, spec.name)
            meta = tap_meta(store.meta, spec, geometries[spec.name])
            if not create:
                out[spec.name] = open_store(loc, "a")
                continue
            try:
                tap = open_store(loc, "a")
            except StoreNotFoundError:
                tap = create_tap_store(store, spec.name, meta)
            out[spec.name] = tap
            _check_tap(tap, meta, spec)
            for name, s in store.splits.items():
                if name not in tap.splits:
                    tap.add_split(split_spec(name), chunk_samples=s.chunk_samples, shard_samples=s.block_samples)
    except BaseException:
        for t in out.values():
            t.close()
        raise
    return out


def _check_tap(tap: FeatureStore, meta: StoreMeta, spec: TapSpec) -> None:
    want = compute_provenance(meta, {}, tap.format_version)
    have = compute_provenance(tap.meta, {}, tap.format_version)
    if want != have:
        diff = describe_differences(tap.meta.to_json(), meta.to_json())
        raise ProvenanceMismatchError(
            f"{tap.location}: tap {spec.name} was extracted with another configuration ({diff}); "
            "extract into a new --out, or pass --overwrite"
        )


class TapExtractor:
    """Wraps an extractor: the same outputs, plus each tap's ``[B, T, D]`` of every layer in ``captured``.

    The hooks live only for one call and are removed even when the forward raises.
    """

    def __init__(
        self, inner: Callable[[Any], Any], model: nn.Module, layers: tuple[int, ...], specs: tuple[TapSpec, ...],
        *, name: str,
    ) -> None:
        self.inner = inner
        self.specs = specs
        self.layers = layers
        self._modules = {s.name: _modules(model, s, layers, name=name) for s in specs}
        self.captured: dict[str, list[torch.Tensor]] = {}

    def __call__(self, x: torch.Tensor) -> Any:
        got: dict[str, list[Any]] = {s.name: [None] * len(self.layers) for s in self.specs}
        handles = []
        try:
            for tap, modules in self._modules.items():
                for i, module in enumerate(modules):
                    handles.append(module.register_forward_hook(_capture(got[tap], i)))
            result = self.inner(x)
        finally:
            for h in handles:
                h.remove()
        self.captured = got
        return result


def _capture(slots: list[Any], i: int) -> Callable[..., None]:
    def hook(module: Any, args: Any, output: Any) -> None:
        slots[i] = output

    return hook
