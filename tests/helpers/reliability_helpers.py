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

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner
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
    from epcache.store.backends.hdf5 import HDF5FeatureStore
    original = HDF5FeatureStore._write_array

    def write_array(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen[0] += 1
        if seen[0] == n:
            die()

    HDF5FeatureStore._write_array = write_array
elif kind == "after-row":
    import epcache.probe.train.group as run  # where a group appends its rows
    original = run.append_result

    def append_result(*args, **kwargs):
        original(*args, **kwargs)
        seen[0] += 1
        if seen[0] == n:
            die()

    run.append_result = append_result
elif kind == "repair-extract":
    import epcache.extract._repair as repair
    repair.extract_store = lambda *args, **kwargs: die()
from epcache.cli import main
sys.argv = ["epcache", *sys.argv[1:]]
main()
'''


def child_env(kill: str) -> dict[str, str]:
    """The environment of a child that imports this checkout's epcache and dies at ``kill``."""
    src = str(Path(epcache.__file__).parents[1])
    path = os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "EPCACHE_KILL": kill, "OMP_NUM_THREADS": "1"}


ZYGOTE = r"""
import json, os, sys
import h5py, numpy, PIL.Image, safetensors, timm, torch, zarr  # the heavy imports, once
import epcache.cli, epcache.extract, epcache.probe, epcache.store
child = sys.argv[1]
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:  # a fresh child per job: nothing of an earlier job survives
        fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.environ["EPCACHE_KILL"] = job["kill"]
        sys.argv = ["epcache", *job["args"]]
        try:
            exec(compile(open(child).read(), child, "exec"), {"__name__": "__main__"})
        except SystemExit as e:
            os._exit(e.code if isinstance(e.code, int) else 1)
        except BaseException:
            import traceback
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0,
                      "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None}), flush=True)
"""


class _Zygote:
    """One process that imports torch, timm and epcache once and forks a child per kill job.

    A fresh interpreter per kill costs seconds of imports on the 2-core CI machine; a fork of a
    process that has imported everything (and started no threads) starts at once.
    """

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="epcache-zygote-"))
        (self.dir / "child.py").write_text(CHILD)
        (self.dir / "zygote.py").write_text(ZYGOTE)
        self.proc = subprocess.Popen([sys.executable, str(self.dir / "zygote.py"), str(self.dir / "child.py")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env("none"))
        self.jobs = 0
        atexit.register(self.close)

    def run(self, kill: str, args: list[str]) -> tuple[int, int | None, str]:
        """(signal, exit code, output) of one job."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.jobs += 1
        log = self.dir / f"job{self.jobs}.log"
        self.proc.stdin.write(json.dumps({"kill": kill, "args": args, "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        assert reply, "the zygote process died"
        done = json.loads(reply)
        return done["signal"], done["code"], log.read_text() if log.exists() else ""

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


_ZYGOTE: list[_Zygote] = []


def run_killed(tmp: Path, kill: str, args: list[str]) -> str:
    """Run ``epcache ARGS`` in a child that SIGKILLs itself at ``kill``; it must die by that signal.

    Returns the child's output. ``tmp`` is unused (kept so a case reads like the command it runs).
    """
    del tmp
    if not _ZYGOTE:
        _ZYGOTE.append(_Zygote())
    sig, code, out = _ZYGOTE[0].run(kill, args)
    assert sig == signal.SIGKILL, (sig, code, out[-3000:])
    return out


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


def resize_tmpfs(mnt: Path, size: str) -> None:
    """Grow or shrink the ``small_disk`` tmpfs (``64k``, ``16m``): fill it up, then make room to resume."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mnt)], check=True)
