"""Where a sweep runs: its device, the precision that device allows, its shard of the configs, CPU threads.

Policy read by the sweep expansion (amp needs the device and enters every config's id), the plan (the
shard picks the configs) and the run (threads). It depends on nothing else in probe, so every layer
above may read it and resolving a sweep never imports the module that runs it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from epcache.errors import ConfigError

__all__ = ["AMP_CHOICES", "TORCH_DTYPES", "cpu_threads", "resolve_amp", "resolve_device", "resolve_shard"]

AMP_CHOICES: tuple[str, ...] = ("auto", "none", "bf16")  # --amp; the rule for auto: epcache/probe/train/precision.py

TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}  # ProbeConfig.dtype -> torch


@contextlib.contextmanager
def cpu_threads(device: torch.device) -> Iterator[str]:
    """A torch thread count for small-head CPU work, unless the user chose one; yields the rule used.

    Probe heads are small ops on batches of a few MB: with as many OpenMP threads as cores, the
    reader thread and OpenMP spin-waiting compete for the cores (measured on a 2-core VM: small ops
    ~100x slower with 2 threads than with 1). So when neither ``OMP_NUM_THREADS`` nor
    ``torch.set_num_threads`` chose a count (torch still at one thread per available core), the
    sweep uses one core fewer than available, leaving one for the reader, and restores the count
    afterwards. The rule is recorded in every row's ``timing``.
    """
    n = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.type != "cpu" or "OMP_NUM_THREADS" in os.environ or n != cores or cores < 2:
        yield f"{n} (as set: OMP_NUM_THREADS or torch.set_num_threads, or a GPU run)"
        return
    torch.set_num_threads(cores - 1)
    try:
        yield f"{cores - 1} (epcache: one core fewer than the {cores} available, for the reader thread)"
    finally:
        torch.set_num_threads(n)


def resolve_shard(spec: str | None) -> tuple[int, int] | None:
    """``"I/N"`` -> ``(I, N)``; without a spec, torchrun's ``RANK``/``WORLD_SIZE`` when ``WORLD_SIZE > 1``.

    Each shard trains every N-th config (by id), streams the store itself and appends to its own
    ``results.shard-I-of-N.jsonl``, so shards never write the same file; `epcache report` reads
    the union. A config gives the same numbers alone or in any sweep, so the union of the shards
    equals the unsharded sweep.

    Raises:
        ConfigError: a malformed spec or I outside 0..N-1.
    """
    if spec is None:
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        return (int(os.environ.get("RANK", "0")), world) if world > 1 else None
    try:
        index, count = (int(x) for x in spec.split("/"))
    except ValueError:
        raise ConfigError(f"--shard takes I/N with integers, e.g. 0/4, got {spec!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"--shard {spec}: I must be in 0..N-1 (e.g. 0/{max(count, 1)})")
    return index, count


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU.

    Raises:
        ConfigError: unknown device, or CUDA requested without one.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return device


def resolve_amp(amp: str, device: torch.device, dtype: str, errors: list[str]) -> tuple[str, str]:
    """``(resolved, rule)``: ``"none"`` or ``"bf16"``, and how it was chosen (for the rows).

    Problems (unknown value, bf16 with float64, bf16 on a GPU without bf16) are appended to
    ``errors`` (the sweep raises them all at once); the returned value is then ``"none"``.
    """
    if amp not in AMP_CHOICES:
        errors.append(f"amp must be one of {', '.join(AMP_CHOICES)}, got {amp!r}")
        return "none", "invalid"
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if amp == "auto":
        if dtype != "float32":
            return "none", f"auto: none with dtype {dtype}"
        if cuda_bf16:
            return "bf16", "auto: bf16 autocast on CUDA"
        return "none", f"auto: none on {device.type}" + (" (no bf16 support)" if device.type == "cuda" else "")
    if amp == "bf16" and dtype != "float32":
        errors.append(f"amp bf16 autocasts float32 heads; dtype {dtype} cannot be combined with it (use amp none)")
        return "none", "invalid"
    if amp == "bf16" and device.type == "cuda" and not cuda_bf16:
        errors.append(f"amp bf16 requested but {device} has no bfloat16 support; use --amp none")
        return "none", "invalid"
    return amp, "as requested"
