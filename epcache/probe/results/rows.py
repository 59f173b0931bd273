"""The run directory: results rows, selected heads, checkpoints, resolved config, summary table.

::

    RUNDIR/config.json              the latest run's resolved sweep (every config's id and name)
    RUNDIR/results.jsonl            one JSON row per finished config (ResultRowJSON)
    RUNDIR/heads/<id>.safetensors   selected head: single-head state dict + JSON config in metadata
    RUNDIR/ckpt/<group>.safetensors per input group, after every epoch (deleted when the group is done)
    RUNDIR/summary.txt              the printed summary table (--repeats N: each repeat's selected config, mean ± std)
    RUNDIR/*.repeat-R.*             --repeats N: repeat R's config, plan and summary table

Only safetensors and JSON are written (no pickle). Every file is written to a temporary name
and renamed into place, except ``results.jsonl``, which is appended one full line at a time
(flushed and fsynced); a line cut short by a crash is ignored and removed on the next run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from epcache._fs.atomic import atomic_write
from epcache.errors import ConfigError
from epcache.probe.data.sources import rebuild_head
from epcache.probe.results.metrics import MetricsJSON
from epcache.probe.results.summary import format_summary, seed_summary, short_label

__all__ = [
    "RESULTS_FILE",
    "RESULT_SCHEMA",
    "ResultRowJSON",
    "append_result",
    "format_summary",
    "load_checkpoint",
    "load_head",
    "read_results",
    "repair_results",
    "save_checkpoint",
    "save_head",
    "seed_summary",
    "short_label",
    "write_json",
    "write_text",
]

RESULTS_FILE = "results.jsonl"
RESULT_SCHEMA = "epcache-probe-result/2"  # /2: 1-based epochs, protocol, seed_group
HEAD_META_KEY = "epcache_head"
CKPT_META_KEY = "epcache_ckpt"
CKPT_SHA_KEY = "epcache_ckpt_sha256"  # sha256 of a checkpoint's tensors and state, checked before a resume


class ResultRowJSON(TypedDict):
    """One line of results.jsonl."""

    schema: str
    id: str  # stable hash of every setting that changes the numbers (store provenance included)
    name: str  # readable: "ep(queries=8,d_out=1) layer=11 patch lr=0.001 wd=0 seed=0"
    seed_group: str  # hash of everything but the seed: rows with equal keys are seeds of one config
    config: dict[str, Any]  # all hyperparameters (head, options, layer, tokens, optimizer, lr, blr, wd, seed, ...)
    protocol: dict[str, Any]  # the protocol fingerprint (recipe, optimiser, lr rule, steps, batch, holdout, ...)
    store: dict[str, Any]  # {"path", "provenance", "backbone"} of the train store
    eval_store: dict[str, Any]  # the same for the store holding the eval split
    data: dict[str, Any]  # num_classes, num_train, num_holdout, num_eval, excluded_train, excluded_eval
    params: int  # trainable parameters of the head
    flops: int  # forward matmul FLOPs per image (head_cost)
    selected_epoch: int  # 1-based; by protocol["selection"] (ranking.EPOCH_SELECTION); last epoch without a holdout
    # {"holdout": ..., "eval": ..., "interval": how every top1_ci was made (intervals.INTERVAL_METHOD)}
    metrics: dict[str, MetricsJSON | str | None]
    oracle: dict[str, Any]  # {"epoch" (1-based), "eval_top1"}: this seed's max over epochs on eval; epoch 0: solver
    final: dict[str, Any]  # {"epoch" (1-based), "eval_top1"} of the last epoch
    curves: dict[str, list[float | None]]  # train_loss, holdout_top1, eval_top1 per epoch (item i = epoch i+1)
    diverged: bool  # the training loss became inf/nan
    head_file: str | None  # relative to RUNDIR
    timing: dict[str, Any]  # wall-clock fields; the only fields that differ between identical runs


def read_results(path: Path) -> list[dict[str, Any]]:
    """Rows of a results.jsonl; a last line without newline (a crash mid-write) is ignored.

    Raises:
        ConfigError: a complete line that is not JSON (the file was edited by hand).
    """
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    complete = lines[:-1]  # the part after the last newline is either empty or truncated
    rows = []
    for i, line in enumerate(complete):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            raise ConfigError(f"{path}: line {i + 1} is not JSON; delete that line to re-run its config") from None
    return rows


def repair_results(path: Path) -> None:
    """Cut a truncated last line so the next append starts on a fresh line."""
    if not path.exists():
        return
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    if cut != len(data):
        with open(path, "r+b") as f:
            f.truncate(cut)
            f.flush()
            os.fsync(f.fileno())


def append_result(path: Path, row: ResultRowJSON | dict[str, Any]) -> None:
    """Append one row as one line, flushed and fsynced (a crash leaves at most a partial last line)."""
    line = json.dumps(_finite(row), separators=(",", ":"), allow_nan=False) + "\n"
    data = memoryview(line.encode("utf-8"))
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        try:
            while data:  # unbuffered: a short write is seen here, not again when a buffer is closed
                data = data[os.write(fd, data):]
            os.fsync(fd)
        except OSError:  # a full disk: the short line is cut again (truncating needs no space)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    _atomic_bytes(path, (json.dumps(_finite(obj), indent=2, allow_nan=False) + "\n").encode())


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically: a full disk leaves the previous file (or none), never a cut one."""
    _atomic_bytes(path, text.encode("utf-8"))


def save_head(path: Path, state: dict[str, Tensor], config: dict[str, Any]) -> None:
    """A head's state dict with its ``create_head`` arguments (and provenance) as JSON metadata."""
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    _atomic_safetensors(path, tensors, {HEAD_META_KEY: json.dumps(_finite(config), allow_nan=False)})


def load_head(path: str | Path, *, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a saved head: ``create_head(kind, **options, in_dim=..., ...)`` + ``load_state_dict``.

    Returns:
        The head in eval mode and its metadata (config id, layer, tokens, store provenance ...).
    """
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {})[HEAD_META_KEY])
    state = load_file(str(path), device=device)
    head = rebuild_head(meta)
    head.load_state_dict(state)
    return head.to(device).eval(), meta


def save_checkpoint(path: Path, tensors: dict[str, Tensor], state: dict[str, Any]) -> None:
    """One file holding tensors and the JSON state, replaced atomically (never half old, half new).

    The metadata records the sha256 of the tensors and the state as written, so a resume never
    continues from a checkpoint whose numbers were changed afterwards (``load_checkpoint``).
    """
    text = json.dumps(_finite(state), allow_nan=False)
    _atomic_safetensors(path, tensors, {CKPT_META_KEY: text, CKPT_SHA_KEY: _checkpoint_sha256(tensors, text)})


def load_checkpoint(
    path: Path, *, say: Callable[[str], None] | None = None
) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
    """Tensors and state of a checkpoint, or None if there is none, it cannot be read, or it fails its sha256.

    A checkpoint whose tensors or state no longer hash to the sha256 recorded at write time is not
    resumed from (one note through ``say``): the group restarts from epoch 0, which gives the
    numbers it would have given.
    """
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            text = meta[CKPT_META_KEY]
            state = json.loads(text)
        tensors = load_file(str(path))
    except (OSError, KeyError, ValueError, RuntimeError):
        return None  # unreadable: the group restarts from epoch 0, which gives the same numbers
    if meta.get(CKPT_SHA_KEY) != _checkpoint_sha256(tensors, text):
        if say is not None:
            say(f"note: checkpoint {path} does not hash to the sha256 recorded when it was written; "
                "training its group again from the first epoch")
        return None
    return tensors, state


def _finite(obj: Any) -> Any:
    """JSON has no NaN/inf: non-finite floats become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _checkpoint_sha256(tensors: dict[str, Tensor], state_text: str) -> str:
    """sha256 over the state and every tensor's name, dtype, shape and bytes (in name order)."""
    h = hashlib.sha256(state_text.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _atomic_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def _atomic_safetensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    """safetensors' own error for a failed write carries the errno only in its text ("os error 28"):
    it becomes the ``OSError`` it is, so a full disk reaches the user as one line (``os_errors``)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as e:
            code = re.search(r"os error (\d+)", str(e))
            if code is None:
                raise
            err = int(code.group(1))
            raise OSError(err, os.strerror(err), str(path)) from None
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
