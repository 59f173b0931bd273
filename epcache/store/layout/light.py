"""Light stores: the whole patch grid averaged into one token, CLS (and registers) kept (cache_layout.md §2.6).

Probes that read one vector per layer (CLS, GAP, both, their layer mixes, the solvers, ALF) never
touch a store's patch grid, which is nearly all of its bytes. A light store is the limit of the
pooled stores of ``poolgrid.py``: the grid pooled to 1x1, so each layer holds ``[CLS, registers...,
GAP]``. It is the same format (a grid of one token), so every reader reads it; ``layout.keep``
records what was kept. ``extract --keep`` and ``convert --keep`` both call :func:`light_tokens` on
values already in the store dtype, so a conversion of an unpooled store of that dtype gives the
bytes an extraction with ``--keep`` writes.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from epcache.errors import ConfigError
from epcache.store.layout.chunking import NUMPY_DTYPES
from epcache.store.layout.meta import StoreMeta, TokenLayout

__all__ = ["KEEP_SETS", "light_layout", "light_meta", "light_tokens", "parse_keep"]

# what --keep accepts: GAP is the pooled grid (a store needs one) and CLS is what every light probe reads first
KEEP_SETS: tuple[tuple[str, ...], ...] = (("cls", "gap", "registers"), ("cls", "gap"))


def parse_keep(text: str | None) -> tuple[str, ...] | None:
    """``--keep cls,gap[,registers]`` as the sorted tuple recorded in ``layout.keep``; None: keep everything.

    Raises:
        ConfigError: any other set of names.
    """
    if text is None or not str(text).strip():
        return None
    names = tuple(sorted({part.strip() for part in str(text).split(",") if part.strip()}))
    if names not in KEEP_SETS:
        raise ConfigError(
            f"--keep {text!r}: a light store keeps one of {', '.join(','.join(s) for s in KEEP_SETS)} "
            "(the patch grid averaged into the gap token); leave --keep out to store every token"
        )
    return names


def light_layout(layout: TokenLayout, keep: tuple[str, ...], *, what: str) -> TokenLayout:
    """``layout`` (one layer's, before pooling) as a light store holds it: kept prefix, then one grid token.

    A backbone without CLS keeps none (``cls`` is then a no-op); dropped registers leave
    ``num_registers`` 0 and CLS first. ``pool_patches`` is reset: the one token is the mean of
    every patch the layout holds, whatever windows they already averaged.

    Raises:
        ConfigError: ``keep`` asks for registers a light layout has already dropped.
    """
    if layout.keep is not None and "registers" in keep and "registers" not in layout.keep:
        raise ConfigError(f"{what} dropped its register tokens (--keep {','.join(layout.keep)}); "
                          "they cannot be kept again: convert from the full store")
    if "registers" in keep or layout.num_registers == 0:
        prefix, cls_index, registers = layout.num_prefix, layout.cls_index, layout.num_registers
    else:
        prefix, cls_index, registers = (1, 0, 0) if layout.cls_index is not None else (0, None, 0)
    return TokenLayout(num_prefix=prefix, cls_index=cls_index, num_registers=registers, grid=(1, 1), keep=keep)


def light_meta(meta: StoreMeta, keep: tuple[str, ...], *, what: str) -> StoreMeta:
    """The metadata of ``meta``'s tokens made light: every layer's grid 1x1, ``layout.keep`` set."""
    layout = light_layout(meta.layout, keep, what=what)
    dims = {layer: meta.layer_shape(layer)[1] for layer in meta.layers}
    shapes = {layer: ((1, 1), d) for layer, d in dims.items()} if len(set(dims.values())) > 1 else {}
    return dataclasses.replace(meta, layout=layout, num_tokens=layout.num_tokens, layer_shapes=shapes)


def light_tokens(tokens: np.ndarray, layout: TokenLayout, keep: tuple[str, ...], dtype: str) -> np.ndarray:
    """``[..., T, D]`` tokens of one layer -> ``[..., kept prefix + 1, D]``: the prefix kept, then GAP.

    GAP sums the patches in float64 one grid position at a time in row-major order, divides by their
    count, rounds to float32 and then to ``dtype`` (the cast of every conversion): the result depends
    only on the input values, never on how many samples a call holds, so a block pooled at
    extraction and a chunk at conversion give the same bytes. Any grid shape works (no divisor needed).

    Args:
        tokens: ``[..., num_prefix + h*w, D]`` in a store dtype (float16, float32 or ml_dtypes.bfloat16).
        layout: the layout of ``tokens`` (before this pooling).
        keep: the sorted names of :func:`parse_keep`.
        dtype: logical dtype of the result (``float16``, ``bfloat16``, ``float32``).
    """
    p, (h, w) = layout.num_prefix, layout.grid
    if tokens.shape[-2] != p + h * w:
        raise ValueError(f"tokens have T={tokens.shape[-2]}, the layout says {p} + {h}x{w}")
    out_layout = light_layout(layout, keep, what="the source")
    acc = np.zeros((*tokens.shape[:-2], tokens.shape[-1]), np.float64)
    for t in range(p, p + h * w):
        acc += tokens[..., t, :].astype(np.float64)
    acc /= np.float64(h * w)
    out_dtype = NUMPY_DTYPES[dtype]
    out = np.empty((*tokens.shape[:-2], out_layout.num_tokens, tokens.shape[-1]), out_dtype)
    kept = slice(0, p) if out_layout.num_prefix == p else slice(layout.cls_index or 0, (layout.cls_index or 0) + 1)
    prefix = tokens[..., kept, :][..., : out_layout.num_prefix, :]
    out[..., : out_layout.num_prefix, :] = prefix if prefix.dtype == out_dtype else (
        prefix.astype(np.float32).astype(out_dtype))
    out[..., -1, :] = acc.astype(np.float32).astype(out_dtype)
    return out
