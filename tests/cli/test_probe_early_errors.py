"""`epcache probe` refuses a typo before torch loads, in the words the full checks use.

Each typo runs through ``python -m epcache probe`` in a fresh interpreter whose import system exits
(code 97) the moment torch or timm is imported: exit 2 with the message proves the answer came from
the pre-check. The same typo through the library (``probe_store``, no pre-check) gives the
reference message. A command the full checks accept reaches the torch import (97), grid files included.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from probe_helpers import write_store

from epcache.cli.probe_check import precheck_probe
from epcache.errors import EpcacheError
from epcache.probe import ProbeConfig, probe_store

pytestmark = pytest.mark.reliability_bad_input

ROOT = Path(__file__).resolve().parents[2]
TORCH_LOADED = 97

# installs the guard, then runs `python -m epcache probe ...` once per argument list; one interpreter for all
GUARDED = """
import io, json, os, runpy, sys
from contextlib import redirect_stderr, redirect_stdout

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "timm"):
            sys.__stdout__.write(json.dumps({"code": __TORCH__, "output": name + " imported"}) + "\\n")
            sys.__stdout__.flush()
            os._exit(__TORCH__)
        return None

sys.meta_path.insert(0, NoTorch())
for argv in json.loads(sys.argv[1]):
    sys.argv = ["epcache", "probe", *argv]
    out = io.StringIO()
    try:
        with redirect_stdout(out), redirect_stderr(out):
            runpy.run_module("epcache", run_name="__main__", alter_sys=False)
        code = 0
    except SystemExit as e:
        code = e.code
    sys.__stdout__.write(json.dumps({"code": code, "output": out.getvalue()}) + "\\n")
""".replace("__TORCH__", str(TORCH_LOADED))

TYPOS: dict[str, tuple[list[str], dict[str, str]]] = {  # name -> (CLI options, the same as ProbeConfig fields)
    "store path": (["--store", "{missing}"], {"store": "{missing}"}),
    "eval store path": (["--eval-store", "{missing}"], {"eval_store": "{missing}"}),
    "hdf5 store path": (["--store", "{missing_h5}"], {"store": "{missing_h5}"}),  # through open_store, still no torch
    "not a store": (["--store", "{plain_dir}"], {"store": "{plain_dir}"}),
    "head": (["--head", "linear,eq"], {"head": "linear,eq"}),
    "layer": (["--layers", "7"], {"layers": "7"}),
    "negative layer": (["--layers", "-5"], {"layers": "-5"}),
    "train split": (["--train-split", "trian"], {"train_split": "trian"}),
    "eval split": (["--eval-split", "test"], {"eval_split": "test"}),
    "token kind": (["--head", "linear", "--tokens", "clss"], {"head": "linear", "tokens": "clss"}),
    "preset flag": (["--protocol", "vtab1k", "--holdout", "0.1"], {"protocol": "vtab1k", "holdout": "0.1"}),
    "preset store": (["--protocol", "vtab1k"], {"protocol": "vtab1k"}),
    "preset name": (["--protocol", "vtab2k"], {"protocol": "vtab2k"}),
}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_store(tmp_path_factory.mktemp("early") / "s.zarr", n_train=32, n_val=16)


def _fill(text: str, store: Path) -> str:
    (store.parent / "plain").mkdir(exist_ok=True)
    return text.format(missing=str(store.parent / "nonexist.zarr"), missing_h5=str(store.parent / "nonexist.h5"),
                       plain_dir=str(store.parent / "plain"))


def _guarded(argvs: list[list[str]]) -> list[dict[str, object]]:
    """Each command's exit code and output, or TORCH_LOADED for the one that imported torch (the last run)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", GUARDED, json.dumps(argvs)], capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=300)
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def early(store: Path) -> dict[str, dict[str, object]]:
    """Every typo's answer from one torch-guarded interpreter."""
    argvs = [["--store", str(store), "--no-progress", *(_fill(a, store) for a in args)] for args, _ in TYPOS.values()]
    results = _guarded(argvs)
    assert len(results) == len(TYPOS), results
    return dict(zip(TYPOS, results, strict=True))


def _problems(message: str) -> list[str]:
    """The message's lines, less a sweep error's count header (the pre-check may name fewer problems)."""
    lines = [line.removeprefix("error: ").removeprefix("  - ") for line in message.strip().splitlines()]
    return [line for line in lines if "problem(s) in the sweep" not in line]


@pytest.mark.parametrize("typo", list(TYPOS))
def test_a_typo_answers_before_torch_loads_with_the_full_checks_words(
    typo: str, early: dict[str, dict[str, object]], store: Path
) -> None:
    answer = early[typo]
    assert answer["code"] == 2, answer  # 97 would mean torch was imported first
    output = str(answer["output"])
    assert output.startswith("error: ") and "Traceback" not in output
    fields = {k: _fill(v, store) for k, v in TYPOS[typo][1].items()}
    with pytest.raises(EpcacheError) as full:  # the library path: no pre-check, the full checks only
        probe_store(ProbeConfig.from_cli(**{"store": str(store), **fields}), progress=False)
    assert _problems(output) and set(_problems(output)) <= set(_problems(str(full.value)))


def test_a_valid_command_passes_the_precheck_and_reaches_torch(store: Path, tmp_path: Path) -> None:
    grid = tmp_path / "sweep.toml"
    grid.write_text('[[grid]]\nhead = "linear"\nlayers = "0"\n')
    valid = ["--store", str(store), "--head", "linear,knn", "--layers", "-1", "--tokens", "cls,patch"]
    # --head and --layers wrong on the command line, set right by the grid: only the store is checked early
    by_grid = ["--store", str(store), "--head", "eq", "--layers", "7", "--grid", str(grid)]
    results = _guarded([valid])
    assert results == [{"code": TORCH_LOADED, "output": "torch imported"}]
    results = _guarded([by_grid])
    assert results == [{"code": TORCH_LOADED, "output": "torch imported"}]


def test_precheck_accepts_what_the_full_checks_accept(store: Path) -> None:
    for fields in ({}, {"head": "ep(queries=4),ridge", "layers": "all", "tokens": "patch"},
                   {"layers": "last", "eval_store": str(store)}):
        precheck_probe(ProbeConfig.from_cli(store=str(store), **fields))  # returns: nothing refused
