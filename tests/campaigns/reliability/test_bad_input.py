"""The bad-input campaign: every case of bad_input_cases.CASES through the CLI, with its exact outcome.

Exit code, a substring of the message, one line and no traceback for refusals (exit 2), and the
state afterwards: nothing created at ``--out`` and the data root as it was, or the user's file,
directory or store named by the case byte-identical.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from bad_input_cases import CASES, Case, Ctx
from reliability_helpers import TINY, make_imagefolder, run_cli, tree_snapshot

from epcache.store import StoreLockedError
from epcache.store.ops.lock import acquire_store_lock

pytestmark = pytest.mark.reliability_bad_input


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad_input")
    data = make_imagefolder(root / "data", splits={"train": 8, "val": 4}, classes=("cat", "dog"))
    out = root / "store" / "s.zarr"
    code, text = run_cli("extract", *TINY, "--data", str(data), "--out", str(out))
    assert code == 0, text
    return out


def _state(path: Path) -> object:
    return tree_snapshot(path) if path.is_dir() else path.read_bytes() if path.exists() else None


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, store: Path, tmp_path: Path) -> None:
    ctx = Ctx(tmp_path, store)
    if case.setup is not None:
        case.setup(ctx)
    keep = _state(ctx.keep) if ctx.keep is not None else None
    data = tree_snapshot(ctx.data)
    before_store = tree_snapshot(store)
    code, text = run_cli(*case.argv(ctx))
    assert code == case.code and case.message in text, text
    assert "Traceback" not in text, text
    if code == 2:
        assert len(text.strip().splitlines()) == case.lines and text.startswith("error: "), text
    assert tree_snapshot(ctx.data) == data  # nothing written into the data root
    assert tree_snapshot(store) == before_store
    if ctx.keep is not None:
        assert _state(ctx.keep) == keep  # the user's file, directory or store is untouched
    if case.incomplete:
        code, text = run_cli("verify", str(ctx.out), "--no-progress")
        assert code == 1 and "missing" in text, text  # kept for a resume, and never looks complete
    elif code == 2 and ctx.keep is None:
        assert not ctx.out.exists() and not ctx.out.parent.exists()  # nothing left behind at --out
    leftovers = [p.name for p in tmp_path.rglob(".epcache-*")]
    assert not leftovers, leftovers


def test_two_new_store_writers_racing_get_one_clear_refusal(tmp_path: Path) -> None:
    """Writers creating one new store at once: exactly one holds it, the others get a clear refusal, never
    a FileExistsError from the race to create its directory."""
    for k in range(10):
        loc = tmp_path / f"r{k}" / "deep" / ("s.zarr" if k % 2 else "s.h5")
        outcomes = _race(loc, threads=4)
        assert outcomes.count("held") == 1, outcomes
        assert all(isinstance(o, StoreLockedError) for o in outcomes if o != "held"), outcomes
        assert not [p for p in (tmp_path / f"r{k}").rglob("*") if not p.is_dir()]  # no lock or store left


def _race(loc: Path, *, threads: int) -> list[object]:
    """``threads`` threads take the lock of ``loc`` at once; each holds what it got until all have tried."""
    start, tried = threading.Barrier(threads), threading.Barrier(threads)
    outcomes: list[object] = []

    def take() -> None:
        start.wait()
        lock = None
        try:
            lock = acquire_store_lock(loc)
            outcomes.append("held")
        except Exception as e:
            outcomes.append(e)
        tried.wait()
        if lock is not None:
            lock.release()

    workers = [threading.Thread(target=take) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return outcomes


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs mounted read-only (needs root, as in CI)."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mnt)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("target", ["s.zarr", "s.h5", "sub/s.zarr", "run"])
def test_read_only_file_system(read_only_dir: Path, store: Path, tmp_path: Path, target: str) -> None:
    data = make_imagefolder(tmp_path / "data", splits={"train": 4}, classes=("cat", "dog"))
    out = read_only_dir / target
    if target == "run":
        argv = ["probe", "--store", str(store), "--head", "linear", "--out", str(out)]
    else:
        argv = ["extract", *TINY, "--data", str(data), "--split", "train=train", "--out", str(out)]
    code, text = run_cli(*argv)
    assert code == 2 and "the file system is read-only" in text and "writable file system" in text, text
    assert "Traceback" not in text and len(text.strip().splitlines()) == 1
    assert not list(read_only_dir.iterdir())


@pytest.mark.parametrize("target", ["s.zarr", "s.h5", "run"])
def test_permission_denied(store: Path, target: str) -> None:
    """A directory the user cannot write to. Root writes anywhere, so as root the command runs with the
    effective uid of ``nobody`` (everything it reads is made world-readable; modules are imported first)."""
    if os.geteuid() == 0 and not hasattr(os, "seteuid"):
        pytest.skip("cannot drop privileges on this platform")
    base = Path(tempfile.mkdtemp(prefix="epcache-eacces-"))
    try:
        os.chmod(base, 0o755)
        data = make_imagefolder(base / "data", splits={"train": 4}, classes=("cat", "dog"))
        shared = base / "store.zarr"
        shutil.copytree(store, shared)
        locked = base / "locked"
        locked.mkdir()
        for p in [base, *base.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        os.chmod(locked, 0o555)
        out = locked / target
        if target == "run":
            argv = ["probe", "--store", str(shared), "--head", "linear", "--layers", "11", "--tokens", "cls",
                    "--epochs", "1", "--warmup", "0", "--batch-size", "4", "--holdout", "0", "--no-progress"]
            warm = run_cli(*argv, "--out", str(base / "warm"))  # imports everything the refused run needs
            argv = [*argv, "--out", str(out)]
        else:
            argv = ["extract", *TINY, "--data", str(data), "--split", "train=train", "--out", str(out)]
            warm = run_cli(*[str(base / "warm.zarr") if a == str(out) else a for a in argv])
        assert warm[0] == 0, warm[1]
        if os.geteuid() == 0:
            os.setegid(65534)
            os.seteuid(65534)
        try:
            code, text = run_cli(*argv)
        finally:
            if os.getuid() == 0:
                os.seteuid(0)
                os.setegid(0)
        assert code == 2 and "permission denied" in text and "you can write to" in text, text
        assert "Traceback" not in text and len(text.strip().splitlines()) == 1
        assert not list(locked.iterdir())
    finally:
        os.chmod(base / "locked", 0o755)
        shutil.rmtree(base, ignore_errors=True)


def test_16_bit_png_is_scaled_to_8_bits_not_clipped_white(tmp_path: Path) -> None:
    """PIL's convert("RGB") clips 16-bit values at 255 (a typical 16-bit image became 99.6% white)."""
    import numpy as np
    from PIL import Image

    from epcache.extract._loader import decode_image

    values = np.arange(0, 65536, 64, dtype=np.uint16).reshape(32, 32)
    path = tmp_path / "sixteen.png"
    Image.fromarray(values).save(path)
    with Image.open(path) as im:
        assert im.mode == "I;16"
    rgb = np.asarray(decode_image(path))
    expected = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert rgb.shape == (32, 32, 3) and all((rgb[..., k] == expected).all() for k in range(3))
    assert (rgb == 255).mean() < 0.01 and abs(rgb.mean() - 127.5) < 1
