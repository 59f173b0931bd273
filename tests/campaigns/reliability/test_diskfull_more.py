"""Disk full beyond extraction: convert (zarr and HDF5), probe run directories and their caches, reports.

Each command writes into a small tmpfs and must end with the one-line disk-full message and exit
code 2: no traceback, and no signal (an HDF5 file whose write failed used to crash the interpreter
when it was collected, after the message was printed; convert runs in a child process so that
would show as SIGSEGV). Nothing that looks complete is left where it is not, and the same command
finishes once space is freed. Files a short write cut (a ``.npy`` of the pooled cache, a results
line) are found on the re-run and recomputed.

Needs ``mount -t tmpfs`` (root, as in CI); skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image
from reliability_helpers import TINY, child_env, copy_store, make_imagefolder, run_cli, store_arrays
from reliability_helpers import resize_tmpfs as _resize

pytestmark = pytest.mark.reliability_diskfull

DISK_FULL = "no space left on the device"
PROBE = ["probe", "--layers", "11", "--epochs", "2", "--warmup", "0", "--batch-size", "4", "--device", "cpu",
         "--select", "holdout",  # held out, a group checkpoints every epoch (a cross-validated group writes none)
         "--linear-fit", "sgd", "--no-progress"]  # the recipe's lr grid: a checkpoint of ~150 KB
CONVERT_CHILD = """
import os, sys
import epcache.convert._run as run
checked = run.require_free_space

def race(location, nbytes, *, action, **kwargs):  # the checks pass, then another process takes the space
    if not action.startswith("writing"):
        checked(location, nbytes, action=action, **kwargs)
    filler = os.path.join(os.path.dirname(location), "filler")
    if action.startswith("writing") and not os.path.exists(filler):
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, bytes(4096)):
                pass
        except OSError:
            pass
        os.close(fd)

if sys.argv[1] == "race":
    run.require_free_space = race
from epcache.cli import main
sys.argv = ["epcache", *sys.argv[2:]]
main()
"""


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 36-image float32 store (train and val) and a complete probe run of linear and k-NN heads from it."""
    root = tmp_path_factory.mktemp("diskfull-more")
    data = make_imagefolder(root / "data", splits={"train": 24, "val": 12}, seed=3)
    store = root / "s.zarr"
    code, text = run_cli("extract", *TINY, "--dtype", "float32", "--views", "1", "--split", "train=train",
                         "--split", "val=val", "--data", str(data), "--out", str(store))
    assert code == 0, text
    run = root / "run"
    code, text = run_cli(*PROBE, "--head", "linear,knn", "--store", str(store), "--out", str(run))
    assert code == 0, text
    return {"store": store, "run": run}


def _one_line_disk_full(code: int, text: str, action: str) -> None:
    assert code == 2, (code, text[-3000:])  # a signal would read -11 (SIGSEGV) here
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1, text[-3000:]
    assert text.startswith(f"error: {action}") and DISK_FULL in text, text


def _tokens(path: Path) -> dict[str, bytes]:
    """What a copy shares with its source: labels, order, ids and token bytes (records follow its chunking)."""
    keep = ("labels", "order", "ids", "layers")
    return {k: v for k, v in store_arrays(path).items() if k != "meta" and k.split("/")[1] in keep}


def _rows(run: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    return {r["id"]: {k: v for k, v in r.items() if k not in ("timing", "store", "eval_store", "head_file")}
            for r in rows}


def _cache_started(pooled: Path) -> bool:
    """The pooled-vector cache was being written (its folder exists) and holds no complete entry (no record)."""
    return pooled.is_dir() and not list(pooled.glob("*.json"))


def _temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp-" in p.name or p.name.endswith(".epcache-reserve")]


@pytest.mark.parametrize(
    ("fmt", "race", "size"),
    [
        pytest.param("h5", True, "4m", id="h5-write-fails"),  # the space goes after the check: the write fails
        pytest.param("zarr", True, "4m", id="zarr-write-fails"),
        pytest.param("h5", False, "1200k", id="h5-checked"),  # refused before the write
        pytest.param("zarr", False, "1200k", id="zarr-checked"),
    ],
)
def test_convert_on_a_full_disk_is_one_line_without_a_signal(refs: dict, small_disk: Path, fmt: str, race: bool,
                                                              size: str) -> None:
    _resize(small_disk, size)
    dst = small_disk / f"d.{fmt}"
    args = ["convert", str(refs["store"]), str(dst), "--chunk-samples", "4", "--no-progress"]

    def run(mode: str) -> tuple[int, str]:
        done = subprocess.run([sys.executable, "-c", CONVERT_CHILD, mode, *args], capture_output=True, text=True,
                              env=child_env("none"), timeout=300)
        return done.returncode, done.stdout + done.stderr

    code, text = run("race" if race else "checked")
    _one_line_disk_full(code, text, f"epcache convert into {dst}" if race else "writing block ")
    assert ("the next write needs" in text) is not race  # checked before the write, or the write itself failed
    assert "Nothing was written at the destination" in text
    assert [p.name for p in small_disk.iterdir()] == (["filler"] if race else [])  # no store, copy, lock, ballast
    (small_disk / "filler").unlink(missing_ok=True)
    _resize(small_disk, "16m")
    code, text = run("checked")
    assert code == 0, text
    assert sorted(p.name for p in small_disk.iterdir()) == [dst.name]
    assert _tokens(dst) == _tokens(refs["store"])


@pytest.mark.parametrize(
    ("head", "size", "failed_at"),
    [
        pytest.param("linear", "100k", lambda run, text: "/ckpt/" in text, id="checkpoint"),  # safetensors' error
        pytest.param("knn", "40k", lambda run, text: _cache_started(run / "pooled"),
                     id="pooled-cache"),  # np.save of the pooled vectors: a short write, before any entry's record
    ],
)
def test_probe_into_a_full_disk_is_one_line_and_resumes(refs: dict, small_disk: Path, head: str, size: str,
                                                        failed_at: Callable[[Path, str], bool]) -> None:
    _resize(small_disk, size)
    run = small_disk / "run"
    args = [*PROBE, "--head", head, "--store", str(refs["store"]), "--out", str(run)]
    code, text = run_cli(*args)
    _one_line_disk_full(code, text, f"epcache probe into {run}")
    assert "run the same command again" in text and failed_at(run, text), text
    assert not _temporaries(run)  # no half-written checkpoint, cache entry or config left to fill the disk
    code, text = run_cli(*args)  # still full: the same clean refusal
    _one_line_disk_full(code, text, f"epcache probe into {run}")
    _resize(small_disk, "16m")
    code, text = run_cli(*args)
    assert code == 0 and "Traceback" not in text, text
    expected = {i: r for i, r in _rows(refs["run"]).items() if r["config"]["kind"] == head}
    assert _rows(run) == expected  # the same numbers as a run that never ran out of space
    assert (run / "summary.txt").is_file() and not _temporaries(run)


def test_probe_rerun_recomputes_files_a_short_write_cut(refs: dict, tmp_path: Path) -> None:
    """A results line and a pooled-cache array cut short (a crash or an older version on a full disk)."""
    run = copy_store(refs["run"], tmp_path / "run")
    lines = (run / "results.jsonl").read_text().splitlines(keepends=True)
    knn = [i for i, line in enumerate(lines) if json.loads(line)["config"]["kind"] == "knn"]
    cut = lines.pop(knn[-1])
    (run / "results.jsonl").write_text("".join(lines) + cut[: len(cut) // 2])  # the last row cut mid-line
    arrays = sorted((run / "pooled").glob("*.gap.npy"))
    assert arrays, "the k-NN head keeps its pooled vectors in RUNDIR/pooled"
    whole = {a.name: a.read_bytes() for a in arrays}
    for a in arrays:
        a.write_bytes(whole[a.name][: len(whole[a.name]) // 2])
    code, text = run_cli(*PROBE, "--head", "linear,knn", "--store", str(refs["store"]), "--out", str(run))
    assert code == 0 and "Traceback" not in text, text
    assert _rows(run) == _rows(refs["run"])
    assert {a.name: a.read_bytes() for a in arrays} == whole  # rejected on reading, pooled and written again


@pytest.mark.parametrize(("figures", "size"), [("--figures", "100k"), ("--no-figures", "fill")])
def test_report_into_a_full_disk_is_one_line_and_leaves_no_cut_file(refs: dict, small_disk: Path, figures: str,
                                                                    size: str) -> None:
    dest = small_disk / "report"
    if size == "fill":
        _fill(small_disk / "filler")
    else:
        _resize(small_disk, size)  # room for the first figures, not for all of them
    args = ["report", str(refs["run"]), "--out", str(dest), figures]
    code, text = run_cli(*args)
    _one_line_disk_full(code, text, f"epcache report into {dest}")
    written = sorted(dest.iterdir()) if dest.is_dir() else []
    assert not (dest / "report.md").exists() and not _temporaries(small_disk)
    for png in written:  # what is there is whole
        with Image.open(png) as im:
            im.load()
    (small_disk / "filler").unlink(missing_ok=True)
    _resize(small_disk, "16m")
    code, text = run_cli(*args)
    assert code == 0 and "Traceback" not in text, text
    assert "## All configs" in (dest / "report.md").read_text()


def _fill(path: Path) -> None:
    """Take every free byte of the file system holding ``path``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        block = b"\0" * 4096
        while True:
            try:
                os.write(fd, block)
            except OSError:
                return
    finally:
        os.close(fd)
