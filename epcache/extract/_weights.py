"""Where a backbone's weights come from, and how a release checkpoint is made to fit timm.

Order: a local checkpoint (``--weights``), else timm's weights from the local Hugging Face
cache (looked up offline, never downloaded), else random init only when asked for explicitly.
A missing source is an error: silently random features would be probed as if they were real.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from epcache.errors import ConfigError, WeightsError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "WeightsSource",
    "find_hf_cached_weights",
    "fit_checkpoint",
    "hf_cache_dir",
    "locate_weights",
    "read_state_dict",
    "sha256_file",
    "sha256_state_dict",
]

WeightsKind = Literal["checkpoint", "timm-hf-cache", "random-init"]
_WRAPPER_KEYS = ("model", "state_dict", "teacher", "module")  # MAE, generic, DINO, DDP-pickled
_STRIP_PREFIXES = ("module.", "backbone.", "encoder.")
_DECODER_PREFIXES = ("decoder", "mask_token")  # MAE / SimMIM / BEiT pre-training parts


@dataclass(frozen=True, slots=True)
class WeightsSource:
    """A located weights source (nothing loaded yet)."""

    kind: WeightsKind
    path: Path | None  # the file (checkpoint or resolved HF-cache file); None for random init
    timm_name: str  # name to record: timm name with the tag whose weights these are

    def describe(self) -> str:
        if self.kind == "random-init":
            return "random init (explicit --random-init)"
        return f"{self.kind}: {self.path}"


def locate_weights(
    timm_name: str,
    *,
    weights: Path | None,
    random_init: bool,
    timm_weights: bool = True,
    cache_dir: Path | None = None,
) -> WeightsSource:
    """Find the weights for ``timm_name`` without loading them.

    Args:
        timm_name: timm name, with tag if the user (or the alias) gave one.
        weights: a local checkpoint; takes precedence over everything else.
        random_init: the user asked for random weights explicitly.
        timm_weights: False for aliases timm has no weights for (the HF cache is not consulted).
        cache_dir: Hugging Face hub cache; default from HF_HUB_CACHE / HF_HOME.

    Raises:
        ConfigError: both ``weights`` and ``random_init``.
        WeightsError: the checkpoint does not exist, or no weights are available and random init
            was not requested.
    """
    if weights is not None and random_init:
        raise ConfigError("--weights and --random-init exclude each other; pass one of them")
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights checkpoint {path} does not exist or is not a file")
        if path.suffix not in (".pth", ".pt", ".bin", ".ckpt", ".safetensors"):
            raise WeightsError(f"weights {path} must be a .pth/.pt/.bin/.ckpt (torch) or .safetensors file")
        return WeightsSource("checkpoint", path, timm_name)
    if random_init:
        return WeightsSource("random-init", None, timm_name)
    if timm_weights:
        found = find_hf_cached_weights(timm_name, cache_dir=cache_dir)
        if found is not None:
            return WeightsSource("timm-hf-cache", found[0], found[1])
    where = hf_cache_dir(cache_dir)
    why = (
        "timm has no weights for it"
        if not timm_weights
        else f"its timm weights are not in the local Hugging Face cache ({where})"
    )
    raise WeightsError(
        f"no weights for {timm_name}: {why}. Pass --weights PATH (a .pth/.safetensors checkpoint), "
        "download them once with `python -c \"import timm; timm.create_model('"
        f"{timm_name}', pretrained=True)\"` on a machine with network, or pass --random-init for "
        "random features"
    )


def hf_cache_dir(cache_dir: Path | None = None) -> Path:
    """The Hugging Face hub cache, read from the environment at call time (not import time)."""
    if cache_dir is not None:
        return Path(cache_dir)
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def find_hf_cached_weights(timm_name: str, *, cache_dir: Path | None = None) -> tuple[Path, str] | None:
    """The cached weights file timm would load for ``timm_name``, and the tagged name it belongs to.

    Looks only at the local cache (huggingface_hub's ``try_to_load_from_cache``); no network.
    """
    import timm
    from huggingface_hub import try_to_load_from_cache

    try:
        cfg = timm.models.get_pretrained_cfg(timm_name)
    except RuntimeError:
        return None
    if cfg is None or not cfg.hf_hub_id:
        return None
    tagged = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else str(cfg.architecture)
    repo_id, _, revision = cfg.hf_hub_id.partition("@")
    if cfg.hf_hub_filename:
        stem = cfg.hf_hub_filename.rsplit(".", 1)[0]
        names = [f"{stem}.safetensors", cfg.hf_hub_filename]
        if cfg.hf_hub_filename == "open_clip_pytorch_model.bin":
            names.insert(0, "open_clip_model.safetensors")
    else:
        names = ["model.safetensors", "pytorch_model.bin"]
    root = hf_cache_dir(cache_dir)
    for filename in names:
        hit = try_to_load_from_cache(repo_id, filename, cache_dir=str(root), revision=revision or None)
        if isinstance(hit, str) and os.path.isfile(hit):
            return Path(hit), tagged
    return None


def read_state_dict(path: Path) -> dict[str, Any]:
    """Load a checkpoint without executing pickled code (``weights_only=True`` or safetensors).

    Raises:
        WeightsError: unreadable file, or a pickle that needs arbitrary globals.
    """
    import argparse

    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path), device="cpu"))
        # MAE and DINO training checkpoints carry their argparse.Namespace: plain data, safe to allow
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        raise WeightsError(
            f"cannot read weights {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. "
            "epcache loads only plain tensor checkpoints (torch.load weights_only=True) or .safetensors"
        ) from None
    if not isinstance(obj, Mapping):
        raise WeightsError(f"weights {path} hold a {type(obj).__name__}, expected a dict of tensors")
    return dict(obj)


def fit_checkpoint(
    raw: Mapping[str, Any], model: nn.Module, *, classifier: Iterable[str] = ("head",)
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Unwrap a release checkpoint and drop the parts that are not the backbone.

    Accepts MAE (``{"model": ...}``), DINO (``{"teacher": ...}`` with ``backbone.``), generic
    (``{"state_dict": ...}``) and DDP (``module.``) layouts. Drops the classifier, the MAE
    decoder and mask token, and ``fc_norm`` when the model has none.

    Returns:
        The state dict to load and the sorted list of dropped keys.
    """
    import torch

    sd: Mapping[str, Any] = raw
    for key in _WRAPPER_KEYS:
        inner = sd.get(key)
        if isinstance(inner, Mapping) and inner and not isinstance(inner, torch.Tensor):
            sd = inner
            break
    own = set(model.state_dict())
    tensors: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            dropped.append(k)  # epoch counters, args, optimizer state ...
            continue
        stripped = True
        while stripped and k not in own:  # a key the model itself has is never renamed
            stripped = False
            for prefix in _STRIP_PREFIXES:
                if k.startswith(prefix):
                    k, stripped = k[len(prefix) :], True
        tensors[k] = v
    heads = tuple(c for c in classifier if c)
    keep: dict[str, torch.Tensor] = {}
    for k, v in tensors.items():
        is_head = any(k == h or k.startswith(h + ".") for h in heads) and k not in own
        is_decoder = k.startswith(_DECODER_PREFIXES) and k not in own
        is_fc_norm = k.startswith("fc_norm.") and k not in own
        if is_head or is_decoder or is_fc_norm:
            dropped.append(k)
        else:
            keep[k] = v
    return keep, sorted(dropped)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def sha256_state_dict(model: nn.Module) -> str:
    """Hash of a model's tensors (names, dtypes, shapes, bytes): identifies random-init weights."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
