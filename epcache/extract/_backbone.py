"""Build a timm backbone, with its weights, as the frozen feature extractor.

Two builds exist: a weightless one on the ``meta`` device that only answers shape questions
(layers, token layout, bytes) so the plan and every user error come before anything heavy,
and the real one with weights, frozen in eval mode.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from epcache.errors import ModelError, WeightsError
from epcache.extract._weights import (
    WeightsSource,
    fit_checkpoint,
    read_state_dict,
    sha256_file,
    sha256_state_dict,
)

if TYPE_CHECKING:
    from torch import nn

__all__ = ["LoadReport", "build_meta_model", "load_backbone"]

_FINAL_NORM_PREFIXES = ("norm.", "fc_norm.")  # unused unless final_norm: may be absent from a checkpoint


@dataclass(frozen=True, slots=True)
class LoadReport:
    """How the weights were loaded; goes into the result and the store metadata."""

    source: WeightsSource
    name: str  # timm name recorded in the store (with the tag the weights belong to)
    sha256: str  # of the weights file; for random init, of the initialised tensors
    dropped_keys: tuple[str, ...] = ()  # checkpoint keys that are not backbone (head, decoder)
    missing_unused: tuple[str, ...] = ()  # final-norm keys absent from the checkpoint, never used


def build_meta_model(name: str, *, model_kwargs: Mapping[str, Any], img_size: int | None) -> nn.Module:
    """The architecture on the ``meta`` device: instant, no memory, shape-only forward.

    ``name`` keeps its tag: the tag selects the pretrained config (input size, mean, std) that
    the data config is resolved from.

    Raises:
        ModelError: timm cannot build the model with these keyword arguments.
    """
    import torch

    with torch.device("meta"):
        # eval mode, as for extraction: in train mode BatchNorm refuses a 1x1 map of batch 1
        # (resnet18 at 32 px) while planning, though the real forward runs in eval mode
        return _create(name, model_kwargs=model_kwargs, img_size=img_size).eval()


def load_backbone(
    source: WeightsSource,
    *,
    model_kwargs: Mapping[str, Any],
    img_size: int | None,
    final_norm: bool,
    seed: int,
) -> tuple[nn.Module, LoadReport]:
    """Build the model on CPU with its weights, frozen and in eval mode.

    Random init is seeded from ``seed`` (without touching the global RNG), so an interrupted
    random-init extraction resumes with the very same network.

    Raises:
        WeightsError: the checkpoint misses backbone keys, has keys the model does not know, or
            has tensors of the wrong shape.
        ModelError: timm cannot build the model.
    """
    import torch

    if source.kind == "timm-hf-cache":
        assert source.path is not None
        sd = read_state_dict(source.path)
        with _hf_offline():
            try:
                model = _create(
                    source.timm_name,
                    model_kwargs=model_kwargs,
                    img_size=img_size,
                    pretrained=True,
                    pretrained_cfg_overlay={"state_dict": sd},
                )
            except RuntimeError as e:
                raise WeightsError(f"timm could not load {source.path} into {source.timm_name}: {e}") from None
        report = LoadReport(source, source.timm_name, sha256_file(source.path))
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _create(source.timm_name, model_kwargs=model_kwargs, img_size=img_size)
        if source.kind == "checkpoint":
            assert source.path is not None
            dropped, missing_unused = _load_checkpoint(model, source, final_norm=final_norm)
            report = LoadReport(source, source.timm_name, sha256_file(source.path), dropped, missing_unused)
        else:
            report = LoadReport(source, source.timm_name, sha256_state_dict(model))
    if source.kind != "random-init":
        _refuse_non_finite(model, source)
    model.eval()
    model.requires_grad_(False)
    return model, report


def _refuse_non_finite(model: nn.Module, source: WeightsSource) -> None:
    """A checkpoint with NaN/inf weights gives NaN tokens whatever the stored dtype: say so up front
    (the non-finite-token error would otherwise suggest --dtype bfloat16, which cannot help)."""
    import torch

    tensors = model.state_dict().items()
    bad = [name for name, t in tensors if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise WeightsError(
            f"the checkpoint {source.path} has NaN or inf weights in {len(bad)} tensor(s) "
            f"({', '.join(bad[:3])}{more}); it is damaged or from a diverged run: use another checkpoint"
        )


def _create(
    name: str,
    *,
    model_kwargs: Mapping[str, Any],
    img_size: int | None,
    pretrained: bool = False,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
) -> nn.Module:
    """``timm.create_model`` without a classifier; ``img_size`` goes to models that take it."""
    import timm

    kwargs: dict[str, Any] = {"num_classes": 0, **model_kwargs}
    extra = {} if pretrained_cfg_overlay is None else {"pretrained_cfg_overlay": pretrained_cfg_overlay}
    if img_size is not None and "img_size" not in kwargs:
        try:  # ViTs need img_size at construction (position embeddings); convnets reject it
            return timm.create_model(name, pretrained=pretrained, img_size=img_size, **kwargs, **extra)
        except TypeError as e:
            if "img_size" not in str(e):
                raise ModelError(f"timm cannot build {name} with {kwargs}: {e}") from None
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs, **extra)
    except TypeError as e:
        raise ModelError(f"timm cannot build {name} with {kwargs}: {e}") from None


def _load_checkpoint(
    model: nn.Module, source: WeightsSource, *, final_norm: bool
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    assert source.path is not None
    raw = read_state_dict(source.path)
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    classifier = cfg.get("classifier") or "head"
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    sd, dropped = fit_checkpoint(raw, model, classifier=(*heads, "head"))
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:  # timm's own converter: original-release key names, pos-embed resizing
        try:
            sd = filter_fn(sd, model)
        except (KeyError, RuntimeError, ValueError) as e:
            raise WeightsError(f"{source.path} does not fit {type(model).__name__}: {e}") from None
    try:
        result = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # size mismatches
        first = "; ".join(line.strip() for line in str(e).splitlines()[1:4])
        raise WeightsError(
            f"{source.path} has tensors of the wrong shape for {source.timm_name} ({first}); "
            "is it the checkpoint of another architecture or image size?"
        ) from None
    missing = sorted(result.missing_keys)
    unused = [k for k in missing if not final_norm and k.startswith(_FINAL_NORM_PREFIXES)]
    missing = [k for k in missing if k not in unused]
    if missing:
        raise WeightsError(
            f"{source.path} lacks {len(missing)} backbone weights of {source.timm_name} "
            f"(e.g. {', '.join(missing[:6])}); is it a checkpoint of this architecture?"
        )
    if result.unexpected_keys:
        keys = sorted(result.unexpected_keys)
        raise WeightsError(
            f"{source.path} has {len(keys)} keys that {source.timm_name} does not know "
            f"(e.g. {', '.join(keys[:6])}); is it a checkpoint of this architecture?"
        )
    return tuple(dropped), tuple(unused)


@contextlib.contextmanager
def _hf_offline() -> Iterator[None]:
    """HF_HUB_OFFLINE=1 around timm's loader: weights come from the cache, never the network."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old
