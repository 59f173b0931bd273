"""The built-in head kinds: ``linear``, ``ep``, ``mhca``, ``alf`` and the reference poolers.

Construction order reproduces the reference RNG draws (docs/EP_SPEC.md §1.6): for the reference
poolers the classifier exists first (it is the encoder's own ``head`` Linear), then the
pooling is built; EP builds its pooling first and then a fresh classifier. So under the same
seed, ``create_head`` draws the same initial weights as ``build_probe_head`` (for EP the
reference also draws a throw-away encoder head first; see the tests).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from epcache.errors import HeadSpecError

from ._alf import AttentiveLayerFusion
from ._base import Pooling, ProbeHead
from ._class_attn_pools import CaiTPooler, CoCaPooler
from ._ep import EfficientProbing
from ._grid_pools import CBAMPooler, DOLGPooler
from ._linear import TokenSelect
from ._mhca import MultiHeadCrossAttention
from ._mp import MomentProbing
from ._registry import register_head
from ._token_pools import ABMILPPooler, CLIPPooler, DinoViTPooler, ESimPoolPooler, SimPoolPooler
from ._xattn_pools import AIMPooler, CAEPooler, JEPAPooler, SigLIPPooler

__all__ = ["POOLING_CLASSES"]

# kind -> pooling class; every class knows how to read its constructor args off a state dict.
POOLING_CLASSES: dict[str, type[Pooling]] = {
    cls.kind: cls
    for cls in (
        TokenSelect,
        EfficientProbing,
        MultiHeadCrossAttention,
        AttentiveLayerFusion,
        JEPAPooler,
        SigLIPPooler,
        AIMPooler,
        CAEPooler,
        CaiTPooler,
        CoCaPooler,
        SimPoolPooler,
        ESimPoolPooler,
        ABMILPPooler,
        DinoViTPooler,
        CLIPPooler,
        CBAMPooler,
        DOLGPooler,
    )
}


def _classifier_first(kind: str, in_dim: int, num_classes: int, make: Callable[[], Pooling]) -> ProbeHead:
    classifier = nn.Linear(in_dim, num_classes)  # plays the encoder's pre-existing head
    return ProbeHead(make(), classifier, kind=kind)


@register_head("linear")
def _linear(
    *, in_dim: int, num_classes: int, num_tokens: int | None, num_prefix: int, tokens: str = "cls"
) -> ProbeHead:
    select = TokenSelect(in_dim, tokens=tokens, num_prefix=num_prefix)
    return ProbeHead(select, nn.Linear(select.out_dim, num_classes), kind="linear")


@register_head("ep")
def _ep(
    *, in_dim: int, num_classes: int, num_tokens: int | None, num_prefix: int, queries: int = 32, d_out: int = 1
) -> ProbeHead:
    pooling = EfficientProbing(in_dim, queries=queries, d_out=d_out)
    return ProbeHead(pooling, nn.Linear(pooling.out_dim, num_classes), kind="ep")


@register_head("mhca")
def _mhca(*, in_dim: int, num_classes: int, num_tokens: int | None, num_prefix: int, num_heads: int = 8) -> ProbeHead:
    pooling = MultiHeadCrossAttention(in_dim, num_heads=num_heads)
    return ProbeHead(pooling, nn.Linear(in_dim, num_classes), kind="mhca")


@register_head("alf")
def _alf(
    *, in_dim: int, num_classes: int, num_tokens: int | None, num_prefix: int, queries: int = 1, num_heads: int = 8
) -> ProbeHead:
    if num_tokens is None:
        raise HeadSpecError("'alf' learns an embedding per (layer, CLS/GAP) token: pass num_tokens (2 x layers)")
    pooling = AttentiveLayerFusion(in_dim, num_tokens=num_tokens, queries=queries, num_heads=num_heads)
    return ProbeHead(pooling, nn.Linear(pooling.out_dim, num_classes), kind="alf")


@register_head("jepa")
def _jepa(*, in_dim: int, num_classes: int, num_tokens: int | None, num_prefix: int, num_heads: int = 16) -> ProbeHead:
    return _classifier_first("jepa", in_dim, num_classes, lambda: JEPAPooler(in_dim, num_heads=num_heads))


@register_head("siglip")
def _siglip(*, in_dim: int, num_classes: int, num_tokens: int | None, num_prefix: int, num_heads: int = 8) -> ProbeHead:
    return _classifier_first("siglip", in_dim, num_classes, lambda: SigLIPPooler(in_dim, num_heads=num_heads))


@register_head("aim")
def _aim(*, in_dim: int, num_classes: int, num_tokens: int | None, num_prefix: int, num_heads: int = 16) -> ProbeHead:
    return _classifier_first("aim", in_dim, num_classes, lambda: AIMPooler(in_dim, num_heads=num_heads))


@register_head("cae")
def _cae(*, in_dim: int, num_classes: int, num_tokens: int | None, num_prefix: int, num_heads: int = 8) -> ProbeHead:
    return _classifier_first("cae", in_dim, num_classes, lambda: CAEPooler(in_dim, num_heads=num_heads))


@register_head("cait")
def _cait(*, in_dim: int, num_classes: int, num_tokens: int | None, num_prefix: int, num_heads: int = 4) -> ProbeHead:
    return _classifier_first("cait", in_dim, num_classes, lambda: CaiTPooler(in_dim, num_heads=num_heads))


@register_head("coca")
def _coca(*, in_dim: int, num_classes: int, num_tokens: int | None, num_prefix: int) -> ProbeHead:
    return _classifier_first("coca", in_dim, num_classes, lambda: CoCaPooler(in_dim))


@register_head("simpool")
def _simpool(*, in_dim: int, num_classes: int, num_tokens: int | None, num_prefix: int) -> ProbeHead:
    return _classifier_first("simpool", in_dim, num_classes, lambda: SimPoolPooler(in_dim))


@register_head("esimpool")
def _esimpool(
    *, in_dim: int, num_classes: int, num_tokens: int | None, num_prefix: int, num_heads: int = 12
) -> ProbeHead:
    return _classifier_first("esimpool", in_dim, num_classes, lambda: ESimPoolPooler(in_dim, num_heads=num_heads))


@register_head("abmilp")
def _abmilp(*, in_dim: int, num_classes: int, num_tokens: int | None, num_prefix: int) -> ProbeHead:
    return _classifier_first("abmilp", in_dim, num_classes, lambda: ABMILPPooler(in_dim))


@register_head("dinovit")
def _dinovit(
    *, in_dim: int, num_classes: int, num_tokens: int | None, num_prefix: int, num_heads: int = 8
) -> ProbeHead:
    return _classifier_first("dinovit", in_dim, num_classes, lambda: DinoViTPooler(in_dim, num_heads=num_heads))


@register_head("clip")
def _clip(*, in_dim: int, num_classes: int, num_tokens: int | None, num_prefix: int, num_heads: int = 4) -> ProbeHead:
    if num_tokens is None:
        raise HeadSpecError("'clip' head learns a position table per token: pass num_tokens (196 at ViT-B/16)")
    return _classifier_first(
        "clip", in_dim, num_classes, lambda: CLIPPooler(in_dim, num_tokens=num_tokens, num_heads=num_heads)
    )


@register_head("cbam")
def _cbam(*, in_dim: int, num_classes: int, num_tokens: int | None, num_prefix: int) -> ProbeHead:
    return _classifier_first("cbam", in_dim, num_classes, lambda: CBAMPooler(in_dim))


@register_head("dolg")
def _dolg(*, in_dim: int, num_classes: int, num_tokens: int | None, num_prefix: int) -> ProbeHead:
    return _classifier_first("dolg", in_dim, num_classes, lambda: DOLGPooler(in_dim))


@register_head("mp")
def _mp(
    *, in_dim: int, num_classes: int, num_tokens: int | None, num_prefix: int, hidden: int = 512, num_heads: int = 4
) -> MomentProbing:
    """Moment Probing: CLS (GAP when ``num_prefix`` is 0) plus adjacent cross-covariances of the patches."""
    return MomentProbing(in_dim, num_classes, hidden=hidden, num_heads=num_heads, num_prefix=num_prefix)
