"""Kills inside block writes (zarr, sharded zarr, HDF5), of --overwrite, of sweeps and of repairs.

Each case kills a real ``epcache`` process at an exact moment (reliability_helpers.CHILD), then
does what a user does (re-run, with ``--break-lock`` when told the killed run left its lock) and
checks the outcome: the store verifies clean, holds the bytes of an uninterrupted run, and no
leftover of the killed run remains (``.partial`` files, staging stores, stale checkpoints,
repair scratch directories).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from reliability_helpers import (
    TINY,
    copy_store,
    make_imagefolder,
    run_cli,
    run_killed,
    store_arrays,
    store_files,
)

pytestmark = pytest.mark.reliability_kill

FORMATS = {
    "zarr": ([], "s.zarr", "zarr-partial:3"),
    "zarr-sharded": (["--shard-samples", "8"], "s.zarr", "zarr-partial:2"),
    "h5": ([], "s.h5", "h5-data:3"),
}


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 16-image dataset and an uninterrupted reference store per format."""
    root = tmp_path_factory.mktemp("kill")
    data = make_imagefolder(root / "data", splits={"train": 16}, seed=5)
    out: dict = {"root": root, "data": data}
    for name, (extra, fname, _) in FORMATS.items():
        ref = root / "ref" / name / fname
        code, text = run_cli("extract", *TINY, *extra, "--data", str(data), "--split", "train=train",
                             "--out", str(ref), "--record-paths")  # one data root for stores anywhere
        assert code == 0, text
        out[name] = ref
    return out


def _args(refs: dict, out: Path, extra: list[str]) -> list[str]:
    return ["extract", *TINY, *extra, "--data", str(refs["data"]), "--split", "train=train", "--out", str(out),
            "--record-paths"]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_kill_inside_a_block_write_resumes_byte_identical_without_leftovers(refs: dict, tmp_path: Path,
                                                                            fmt: str) -> None:
    extra, fname, kill = FORMATS[fmt]
    out = tmp_path / fname
    run_killed(tmp_path, kill, _args(refs, out, extra))
    if fmt.startswith("zarr"):
        assert list(out.rglob("*.partial")), "the kill must land between zarr's write and its rename"
    code, text = run_cli("verify", str(out), "--no-progress")
    assert code == 1 and "missing" in text  # incomplete, and says so
    code, text = run_cli(*_args(refs, out, extra))
    assert code == 2 and "stale writer lock" in text and "--break-lock" in text, text
    code, text = run_cli(*_args(refs, out, [*extra, "--break-lock"]))
    assert code == 0 and "Traceback" not in text, text
    assert not list(out.parent.rglob("*.partial"))  # the killed write's temporary file is gone
    assert sorted(p.name for p in out.parent.iterdir()) == [fname]  # no lock, reserve or staging left
    assert store_arrays(out) == store_arrays(refs[fmt])
    code, text = run_cli("verify", str(out), "--no-progress")
    assert code == 0, text


@pytest.mark.parametrize("fmt", ["zarr", "h5"])
def test_kill_during_overwrite_keeps_the_old_store_readable(refs: dict, tmp_path: Path, fmt: str) -> None:
    extra, fname, kill = FORMATS[fmt]
    out = copy_store(refs[fmt], tmp_path / fname)
    before = store_files(out) if fmt == "zarr" else {"file": out.read_bytes()}
    new = ["--layers", "5", "--overwrite"]  # a different store replaces it
    run_killed(tmp_path, kill.replace(":3", ":2"), _args(refs, out, [*extra, *new]))
    assert (store_files(out) if fmt == "zarr" else {"file": out.read_bytes()}) == before
    code, text = run_cli("verify", str(out), "--no-progress")
    assert code == 0, text  # the old store is untouched and complete
    staging = [p for p in tmp_path.iterdir() if p.name.startswith(".epcache-overwrite-")]
    assert len(staging) == 1
    code, text = run_cli("verify", str(staging[0]), "--no-progress")
    assert code == 1 and "missing" in text  # the half-built replacement never looks complete
    code, text = run_cli("ls", str(tmp_path))
    assert code == 0 and ".epcache-overwrite-" not in text
    code, text = run_cli(*_args(refs, out, [*extra, *new, "--break-lock"]))
    assert code == 0, text
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".epcache-")]
    code, text = run_cli("info", str(out), "--json")
    assert code == 0 and json.loads(text)["layers"] == [5]


PROBE = ["probe", "--head", "linear", "--layers", "11", "--tokens", "cls", "--lr", "0.01,0.05", "--epochs", "2",
         "--warmup", "0", "--batch-size", "4", "--holdout", "0", "--device", "cpu", "--no-progress",
         "--linear-fit", "sgd"]  # the trained rows only: the kill lands in training


def test_sweep_killed_after_its_rows_resumes_without_stale_checkpoints(refs: dict, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [*PROBE, "--store", str(refs["zarr"]), "--eval-split", "train", "--out", str(run)]
    run_killed(tmp_path, "after-row:2", args)
    rows = (run / "results.jsonl").read_text()
    assert rows.count("\n") == 2
    assert list((run / "ckpt").iterdir()), "the kill must land before the checkpoint is deleted"
    code, text = run_cli(*args)
    assert code == 0 and "Traceback" not in text, text
    assert (run / "results.jsonl").read_text() == rows  # nothing trained twice, no duplicate rows
    assert not list((run / "ckpt").iterdir())  # the stale per-epoch checkpoint is gone
    assert not list(run.glob(".epcache-run*.lock"))


def test_sweep_killed_between_the_rows_of_a_group_resumes_to_the_same_rows(refs: dict, tmp_path: Path) -> None:
    """The group is resumed whole from its checkpoint (float32 numbers depend on the stack size)."""
    args = [*PROBE, "--store", str(refs["zarr"]), "--eval-split", "train", "--lr", "0.01,0.02,0.05"]
    run_killed(tmp_path, "after-row:1", [*args, "--out", str(tmp_path / "run")])
    assert (tmp_path / "run" / "results.jsonl").read_text().count("\n") == 1
    code, text = run_cli(*args, "--out", str(tmp_path / "run"))
    assert code == 0 and "Traceback" not in text, text
    code, text = run_cli(*args, "--out", str(tmp_path / "ref"))  # never interrupted
    assert code == 0, text

    def rows(run: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "timing"}
                for r in map(json.loads, (run / "results.jsonl").read_text().splitlines())]

    assert rows(tmp_path / "run") == rows(tmp_path / "ref")  # exactly, float32 included
    assert not list((tmp_path / "run" / "ckpt").iterdir())


def test_repair_killed_mid_way_leaves_no_scratch_after_the_next_repair(refs: dict, tmp_path: Path) -> None:
    out = copy_store(refs["zarr"], tmp_path / "s.zarr")
    chunk = out / "splits" / "train" / "layers" / "11" / "c" / "1" / "0" / "0" / "0"
    chunk.write_bytes(b"\0" * len(chunk.read_bytes()))  # damaged bytes: a crc32c mismatch
    repair = ["verify", str(out), "--repair", "--data", str(refs["data"]), "--workers", "0", "--no-progress"]
    run_killed(tmp_path, "repair-extract", repair)
    scratch = [p for p in tmp_path.iterdir() if p.name.startswith(".epcache-repair-")]
    assert len(scratch) == 1 and "s.zarr" in scratch[0].name
    code, text = run_cli(*repair, "--break-lock")
    assert code == 0 and "Traceback" not in text, text
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".epcache-repair-")]
    assert store_arrays(out) == store_arrays(refs["zarr"])
