"""The light imports stay light: each is checked in a fresh interpreter, where nothing else loaded torch first.

``import epcache`` and ``epcache --help`` must start fast (the CLI modules import a stage only when its
command runs); the store layer and the extraction package import no torch (extraction loads torch and
timm only when a stage runs, so ``epcache extract --help``, ``epcache convert`` and a store read start
without them).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

HEAVY = ("torch", "timm", "PIL", "numpy", "zarr")


def _loaded_after(code: str) -> set[str]:
    """The heavy libraries in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport sys\nprint('loaded:', *(m for m in {HEAVY!r} if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    last = r.stdout.splitlines()[-1]  # after whatever ``code`` printed (a help text)
    assert last.startswith("loaded:"), r.stdout
    return set(last.split()[1:])


@pytest.mark.parametrize(
    ("code", "banned"),
    [
        ("import epcache", HEAVY),
        ("import epcache.cli", HEAVY),
        ("import epcache.store.layout", ("torch", "timm", "PIL")),
        ("import epcache.store", ("torch", "timm", "PIL")),
        ("import epcache.extract, epcache.extract.stages", ("torch", "timm")),
        ("import epcache.convert", ("torch", "timm")),
        # `epcache probe` checks options and store metadata with these before torch loads (cli/probe_check.py)
        ("import epcache.probe, epcache.probe.names, epcache.probe.config.probe_config", ("torch", "timm", "zarr")),
        ("import epcache.cli.probe_check", ("torch", "timm", "zarr")),
    ],
)
def test_import_leaves_heavy_libraries_unloaded(code: str, banned: tuple[str, ...]) -> None:
    assert not _loaded_after(code) & set(banned)


@pytest.mark.parametrize(("argv", "banned"), [(["--help"], HEAVY), (["extract", "--help"], ("torch", "timm"))])
def test_help_leaves_heavy_libraries_unloaded(argv: list[str], banned: tuple[str, ...]) -> None:
    code = (
        "import sys\n"
        f"sys.argv = ['epcache', *{argv!r}]\n"
        "from epcache.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
    )
    assert not _loaded_after(code) & set(banned)


def test_the_check_sees_a_heavy_import() -> None:
    assert {"torch", "numpy"} <= _loaded_after("import epcache.probe.run")
    assert "torch" in _loaded_after("from epcache.probe import probe_store")  # the face imports on first touch
