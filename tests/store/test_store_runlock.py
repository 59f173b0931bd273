"""epcache/probe/rundir.py: stale per-epoch checkpoints go, checkpoints a sweep may still resume from stay."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from epcache.probe.rundir import remove_stale_checkpoints


def _ckpt(path: Path, ids: list[str]) -> Path:
    save_file({"w": torch.zeros(2)}, str(path), metadata={"epcache_ckpt": json.dumps({"config_ids": ids})})
    return path


def test_only_finished_or_orphaned_checkpoints_are_removed(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    done = _ckpt(ckpt / "layer11-aaaa.safetensors", ["a", "b"])  # every config has its row
    open_ = _ckpt(ckpt / "layer11-bbbb.safetensors", ["c", "d"])  # "d" has no row: another shard may train it
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = ckpt / f".layer5-cccc.safetensors.tmp-{dead.pid}"  # a checkpoint write whose process is gone
    orphan.write_bytes(b"half")
    live = ckpt / f".layer5-dddd.safetensors.tmp-{os.getpid()}"  # being written right now
    live.write_bytes(b"half")
    removed = remove_stale_checkpoints(tmp_path, {"a", "b", "c"})
    assert sorted(removed) == sorted([done, orphan])
    assert open_.exists() and live.exists() and not done.exists() and not orphan.exists()
