"""Spatial token pooling of the patch grid: K x K windows averaged, prefix tokens kept (cache_layout.md §2.4).

ColBERT-style pooling by 2 divides the patch tokens, and so the store, by about four at little
cost to probes on whole-image labels. ``extract --pool-patches`` and ``convert --pool-patches``
both call :func:`pool_patch_tokens`, on values already in the store dtype (extract casts the
forward's output first, exactly as it would store it), so converting an unpooled fp16 store
gives the same bytes as extracting with pooling (cache_layout.md §2.4).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from epcache.errors import ConfigError
from epcache.store.layout.chunking import NUMPY_DTYPES
from epcache.store.layout.meta import StoreMeta, TokenLayout

__all__ = ["cast_tokens", "check_poolable", "pool_patch_tokens", "pooled_meta"]


def check_poolable(layout: TokenLayout, k: int, *, what: str) -> None:
    """Refuse a pooling factor the grid cannot take.

    Raises:
        ConfigError: ``k`` < 1, or a grid side not divisible by ``k`` (``what`` names the layer/store).
    """
    if k < 1:
        raise ConfigError(f"--pool-patches must be >= 1 (1 = no pooling), got {k}")
    h, w = layout.grid
    if k > 1 and (h % k or w % k):
        common = [d for d in range(2, min(h, w) + 1) if h % d == 0 and w % d == 0][:4]
        fix = (
            f"choose a factor that divides both sides ({', '.join(map(str, common))}) or 1 for no pooling"
            if common
            else "no factor above 1 divides it: pass --pool-patches 1, or leave this layer out (--layers)"
        )
        raise ConfigError(f"--pool-patches {k}: the patch grid of {what} is {h}x{w}, not divisible by {k}; {fix}")


def pooled_meta(meta: StoreMeta, k: int, *, what: str) -> StoreMeta:
    """The metadata of ``meta``'s tokens pooled by ``k``: every layer's grid / k, ``pool_patches`` multiplied.

    Raises:
        ConfigError: a layer whose grid ``k`` does not divide.
    """
    if k == 1:
        return meta
    for layer in meta.layers:
        check_poolable(meta.for_layer(layer).layout, k, what=f"{what} layer {layer}")
    h, w = meta.layout.grid
    layout = dataclasses.replace(meta.layout, grid=(h // k, w // k), pool_patches=meta.layout.pool_patches * k)
    shapes = {layer: ((gh // k, gw // k), d) for layer, ((gh, gw), d) in meta.layer_shapes.items()}
    return dataclasses.replace(meta, layout=layout, num_tokens=layout.num_tokens, layer_shapes=shapes)


def pool_patch_tokens(tokens: np.ndarray, layout: TokenLayout, k: int, dtype: str) -> np.ndarray:
    """``[..., T, D]`` tokens of one layer -> the same with the patch grid averaged over k x k windows.

    Prefix tokens (CLS, registers) are copied as they are, only cast to ``dtype``. The window sum
    runs in float32 in a fixed order (row by row within the window) and is cast to ``dtype`` once,
    so the result depends only on the input values, never on how many samples a call holds:
    pooling a block at extraction and a chunk at conversion gives the same bytes.

    Args:
        tokens: ``[..., num_prefix + h*w, D]`` in a store dtype (float16, float32 or ml_dtypes.bfloat16).
        layout: the layout of ``tokens`` (grid h x w before pooling).
        k: window side; 1 only casts.
        dtype: logical dtype of the result (``float16``, ``bfloat16``, ``float32``).
    """
    out_dtype = NUMPY_DTYPES[dtype]
    if k == 1:
        return cast_tokens(tokens, dtype)
    p, (h, w) = layout.num_prefix, layout.grid
    lead, d = tokens.shape[:-2], tokens.shape[-1]
    if tokens.shape[-2] != p + h * w:
        raise ValueError(f"tokens have T={tokens.shape[-2]}, the layout says {p} + {h}x{w}")
    grid = tokens[..., p:, :].reshape(*lead, h // k, k, w // k, k, d)
    acc = np.zeros((*lead, h // k, w // k, d), np.float32)
    for i in range(k):
        for j in range(k):
            acc += grid[..., :, i, :, j, :].astype(np.float32)
    acc /= np.float32(k * k)
    out = np.empty((*lead, p + (h // k) * (w // k), d), out_dtype)
    out[..., :p, :] = cast_tokens(tokens[..., :p, :], dtype)
    out[..., p:, :] = acc.reshape(*lead, -1, d).astype(out_dtype)
    return out


def cast_tokens(values: np.ndarray, dtype: str) -> np.ndarray:
    """``values`` in the logical ``dtype`` (through float32, rounding to nearest even); as is when already."""
    out_dtype = NUMPY_DTYPES[dtype]
    return values if values.dtype == out_dtype else values.astype(np.float32).astype(out_dtype)

