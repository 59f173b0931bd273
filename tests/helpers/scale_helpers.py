"""Shared helpers of the scale-out tests: generated images, tiny extraction commands, store bytes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from epcache.extract import ExtractConfig

TINY_VIT = "vit_tiny_patch16_224"
TINY_VIT_KWARGS: dict[str, Any] = {"depth": 2, "img_size": 32}
LOCK_NAME = ".epcache.lock"  # cache_layout.md: the writer lock inside a zarr store
S3_KEY_ID = "EPCACHETESTKEYID0001"  # the moto bucket fixture's credentials (tests/helpers/moto_s3.py)
S3_SECRET = "epcache-test-secret-that-must-never-be-written"  # test_scale_s3 checks it is written nowhere

# The CLI has no model kwargs, so CLI runs use the 12-block tiny ViT at 32 px (4 patches) and keep
# the last two blocks. Chunks of 4 samples in shards of 8 make shards the write unit, so ranks
# write whole shards concurrently, as on a real ImageNet store.
CLI_TINY = [
    "--model", TINY_VIT, "--random-init", "--img-size", "32", "--layers", "-2:", "--views", "1",
    "--batch-size", "4", "--chunk-samples", "4", "--shard-samples", "8", "--workers", "0", "--no-progress",
]


def make_imagefolder(root: Path, *, splits: dict[str, int], classes: tuple[str, ...] = ("cat", "dog", "eel"),
                     seed: int = 0) -> Path:
    """``root/<split>/<class>/img_<i>.{png,jpg}`` with ``splits[name]`` random images per split."""
    rng = np.random.default_rng(seed)
    for split, n in splits.items():
        for i in range(n):
            h, w = int(rng.integers(32, 64)), int(rng.integers(32, 64))
            path = root / split / classes[i % len(classes)] / f"img_{i:04d}.{'png' if i % 2 else 'jpg'}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)).save(path)
    return root


def tiny_config(data: Path, out: Path | str, **overrides: Any) -> ExtractConfig:
    """A random-init two-block ViT at 32 px on CPU, small blocks, no progress output."""
    kwargs: dict[str, Any] = {
        "model": TINY_VIT,
        "data": data,
        "out": out,
        "random_init": True,
        "model_kwargs": TINY_VIT_KWARGS,
        "batch_size": 4,
        "workers": 0,
        "chunk_samples": 4,
    }
    kwargs.update(overrides)
    return ExtractConfig(**kwargs)


def child_env(**extra: str) -> dict[str, str]:
    """Environment of a child process: one OpenMP thread each (2 shared cores), loopback only."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def torchrun_cmd(nproc: int, *args: str) -> list[str]:
    """``torchrun --standalone --nproc-per-node N ...``: rendezvous on a free loopback port."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), *args]


def run(cmd: list[str], *, cwd: Path, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=child_env(**env), capture_output=True, text=True, timeout=timeout)


def store_files(path: Path) -> dict[str, bytes]:
    """Every file of a zarr store by relative path (chunks, shards, records, metadata), lock excluded."""
    out: dict[str, bytes] = {}
    for f in sorted(path.rglob("*")):
        if f.is_file() and f.name != LOCK_NAME:
            out[f.relative_to(path).as_posix()] = f.read_bytes()
    return out


def written_blocks(path: Path) -> int:
    """Blocks recorded written over all splits (0 while the store does not exist yet)."""
    from epcache.store import open_store

    try:
        with open_store(path) as store:
            return sum(store.split(s).num_blocks - len(store.missing_blocks(s)) for s in store.splits)
    except Exception:  # not created yet, or caught between two metadata writes
        return 0


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 train / 8 val generated images, shared by the torchrun campaigns and the launcher tests (their
    conftests import it; a test module with other needs defines its own ``data``)."""
    return make_imagefolder(tmp_path_factory.mktemp("imgs"), splits={"train": 40, "val": 8})
