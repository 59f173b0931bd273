"""Shared pieces of the reliability campaign: tiny datasets, CLI runs, a child that kills itself on cue.

The child runs the real ``epcache`` CLI in a fresh process with one patch that SIGKILLs the
process at an exact moment (``EPCACHE_KILL``), so a kill lands inside a block write every time,
not by chance:

- ``zarr-partial:N``: the N-th token-chunk write through zarr's atomic write is killed after
  its ``<chunk>.<uuid>.partial`` file is written, before the rename (a sharded store: a shard);
- ``h5-data:N``: the N-th HDF5 block write is killed after its data is flushed, before its record;
- ``after-row:N``: a sweep is killed right after appending its N-th results row (its per-epoch
  checkpoint is still there);
- ``repair-extract``: ``verify --repair`` is killed once it has marked the blocks missing and
  made its scratch directory, as the re-extraction starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "verify"))  # tests/ has no package root

from verify_helpers import copy_store, make_imagefolder, store_arrays, store_files, write_image

import epcache
from epcache.cli import app

__all__ = [
    "CHILD",
    "TINY",
    "app",
    "child_env",
    "copy_store",
    "make_imagefolder",
    "run_cli",
    "run_killed",
    "runner",
    "store_arrays",
    "store_files",
    "tree_snapshot",
    "write_image",
    "write_png16",
]

runner = CliRunner()
TINY = ["--model", "vit_tiny_patch16_224", "--random-init", "--img-size", "32", "--workers", "0", "--no-progress",
        "--layers", "0,11", "--chunk-samples", "4", "--batch-size", "4"]

CHILD = r'''
import contextlib, os, signal, sys, uuid
kind, _, arg = os.environ["EPCACHE_KILL"].partition(":")
n = int(arg) if arg else 0
seen = [0]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if kind == "zarr-partial":
    import zarr.storage._local as zl
    original = zl._atomic_write

    @contextlib.contextmanager
    def atomic(path, mode, exclusive=False):
        if "/layers/" in str(path) and "/c/" in str(path):  # token chunk (or shard) files only
            seen[0] += 1
            if seen[0] == n:
                tmp = path.with_suffix(f".{uuid.uuid4().hex}.partial")
                with tmp.open(mode) as f:
                    yield f
                    f.flush()
                    os.fsync(f.fileno())
                die()
        with original(path, mode, exclusive) as f:
            yield f

    zl._atomic_write = atomic
elif kind == "h5-data":
    from epcache.store._hdf5 import HDF5FeatureStore
    original = HDF5FeatureStore._write_array

    def write_array(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen[0] += 1
        if seen[0] == n:
            die()

    HDF5FeatureStore._write_array = write_array
elif kind == "after-row":
    import epcache.probe.run as run
    original = run.append_result

    def append_result(*args, **kwargs):
        original(*args, **kwargs)
        seen[0] += 1
        if seen[0] == n:
            die()

    run.append_result = append_result
elif kind == "repair-extract":
    import epcache.extract._repair as repair
    repair.extract = lambda *args, **kwargs: die()
from epcache.cli import main
sys.argv = ["epcache", *sys.argv[1:]]
main()
'''


def child_env(kill: str) -> dict[str, str]:
    """The environment of a child that imports this checkout's epcache and dies at ``kill``."""
    src = str(Path(epcache.__file__).parents[1])
    path = os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "EPCACHE_KILL": kill, "OMP_NUM_THREADS": "1"}


def run_killed(tmp: Path, kill: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``epcache ARGS`` in a child that SIGKILLs itself at ``kill``; it must die by that signal."""
    script = tmp.parent / f"epcache_kill_child_{os.getpid()}.py"  # beside, not inside, the test's directory
    if not script.exists():
        script.write_text(CHILD)
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120,
                          env=child_env(kill))
    assert done.returncode == -9, (done.returncode, done.stderr[-3000:])
    return done


def run_cli(*args: str) -> tuple[int, str]:
    """``epcache ARGS`` in this process: (exit code, stdout + stderr); never lets an exception through."""
    r = runner.invoke(app, list(args))
    out = r.output
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        out += f"\nTraceback: {type(r.exception).__name__}: {r.exception}"
    return r.exit_code, out


def tree_snapshot(root: Path) -> dict[str, bytes | str]:
    """Every path under ``root`` with file bytes (directories and links as markers), to prove nothing changed."""
    out: dict[str, bytes | str] = {}
    if not root.exists():
        return out
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = f"link:{os.readlink(p)}"
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = p.read_bytes()
    return out


def write_png16(path: Path, values: np.ndarray) -> Path:
    """A 16-bit grayscale PNG (PIL mode ``I;16``) holding ``values`` (uint16)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint16)).save(path)
    return path
