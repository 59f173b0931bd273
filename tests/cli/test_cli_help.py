"""The CLI reads as git's or pip's: --version, metavars, one default style, names that mean one thing."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
from probe_helpers import write_store
from typer.testing import CliRunner

from epcache import __version__
from epcache.cli import app

runner = CliRunner()
COMMANDS = ("info", "models", "extract", "probe", "report", "attention", "demo", "heads", "verify", "ls", "convert")


def _help(*cmd: str) -> str:
    r = runner.invoke(app, [*cmd, "--help"], terminal_width=100)
    assert r.exit_code == 0, r.output
    return r.output


def test_version_is_eager() -> None:
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"epcache {__version__}"


@pytest.mark.parametrize("cmd", ["", *COMMANDS])
def test_help_has_metavars_and_one_default_style(cmd: str) -> None:
    text = _help(*([cmd] if cmd else []))
    assert not re.search(r"<(bool|str|int|float|text)>", text), text  # typer's type metavars
    assert "{" not in text.split("\n", 1)[0]  # usage line: RUNDIR, not {rundir}
    assert "(default" not in text  # defaults only as [default: X]
    options = text.split("Options:", 1)[-1].split("Examples:", 1)[0]
    for line in options.splitlines():
        m = re.match(r"\s+(--[a-z-]+)(?: ([^\s]+))?\s", line)
        if m and m.group(2) and m.group(2) not in ("/",):
            assert m.group(2) == m.group(2).upper(), line  # --out DIR, --layers SPEC


def test_usage_names_arguments_in_capitals() -> None:
    assert _help("report").splitlines()[0].endswith("report [OPTIONS] RUNDIR")
    assert _help("verify").splitlines()[0].endswith("verify [OPTIONS] STORE")


def test_flags_read_as_git_flags() -> None:
    text = _help("extract")
    assert "--random-init " in text and "--no-random-init" not in text  # off-by-default switch: one name
    assert "--progress / --no-progress" in text and "[default: --progress]" in text


def test_report_help_keeps_brackets() -> None:
    assert "epcache[plot]" in re.sub(r"\s+", " ", _help("report"))  # not eaten by rich markup


def test_probe_help_is_enough_to_act_on() -> None:
    text = re.sub(r"\s+", " ", _help("probe"))  # phrases, whatever the wrapping
    assert "`epcache heads` lists them all" in text  # where the other head names are
    assert "EP width divisor" in text  # --d-out explained
    assert "nothing is saved" in text  # what happens without --out
    assert "[[grid]]" in text and "--grid FILE (TOML)" in text  # the grid format, with an example
    assert "Examples:" in text and "--layers -1" in text


def test_tokens_means_a_token_kind_everywhere() -> None:
    assert "--tokens KINDS" in _help("probe")
    heads = _help("heads")
    assert "--tokens" not in heads and "--patches N" in heads
    r = runner.invoke(app, ["heads", "--dim", "64", "--classes", "10", "--patches", "16", "--queries", "4"])
    assert r.exit_code == 0 and "queries=4" in r.output


def test_model_kwargs_json(tmp_path: Path) -> None:
    bad = runner.invoke(app, ["extract", "--model", "vit_tiny_patch16_224", "--random-init", "--data", str(tmp_path),
                              "--out", str(tmp_path / "s.zarr"), "--model-kwargs", "{depth: 2}"])
    assert bad.exit_code == 2 and "--model-kwargs takes a JSON object" in bad.output
    assert "Traceback" not in bad.output and len(bad.output.strip().splitlines()) == 1
    wrong = runner.invoke(app, ["extract", "--model", "x", "--random-init", "--data", str(tmp_path), "--out",
                                str(tmp_path / "s.zarr"), "--model-kwargs", "[2]"])
    assert wrong.exit_code == 2 and "JSON object" in wrong.output
    assert not (tmp_path / "s.zarr").exists()


def test_model_kwargs_reach_the_model(tmp_path: Path) -> None:
    from epcache.demo._shapes import ShapesConfig, make_shapes_dataset

    data = make_shapes_dataset(tmp_path / "d", ShapesConfig(num_classes=2, train_per_class=2, val_per_class=1, size=32))
    r = runner.invoke(app, ["extract", "--model", "vit_tiny_patch16_224", "--random-init", "--img-size", "32",
                            "--model-kwargs", json.dumps({"depth": 3, "patch_size": 8}), "--data", str(data),
                            "--out", str(tmp_path / "s.zarr"), "--dry-run", "--workers", "0"])
    assert r.exit_code == 0, r.output
    assert "of 0..2" in r.output and "4x4 patches" in r.output  # 3 blocks, 32 px / patch 8


def test_probe_accepts_negative_layers_and_says_when_nothing_is_saved(tmp_path: Path) -> None:
    store = write_store(tmp_path / "s.zarr", n_train=64, n_val=16)  # layers 0, 1 of a 2-block backbone
    fast = ["--epochs", "1", "--warmup", "0", "--batch-size", "32", "--optimizer", "adamw", "--no-progress",
            "--head", "linear", "--lr", "1e-3"]
    r = runner.invoke(app, ["probe", "--store", str(store), "--layers", "-1", *fast])
    assert r.exit_code == 0, r.output
    assert "nothing saved (no --out RUNDIR)" in r.output
    out = tmp_path / "run"
    r = runner.invoke(app, ["probe", "--store", str(store), "--layers", "-2:", "--out", str(out), *fast])
    assert r.exit_code == 0, r.output
    layers = {json.loads(x)["config"]["layer"] for x in (out / "results.jsonl").read_text().splitlines()}
    assert layers == {0, 1}
    assert f"epcache report {out}" in r.output
    r = runner.invoke(app, ["probe", "--store", str(store), "--layers", "-3", *fast])
    assert r.exit_code == 2 and "out of range" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("cmd", [["models"], ["heads"], ["heads", "--dim", "1024", "--classes", "21843"]])
def test_tables_fit_100_columns_and_use_one_flop_unit(cmd: list[str]) -> None:
    r = runner.invoke(app, cmd)
    assert r.exit_code == 0, r.output
    assert max(len(line) for line in r.output.splitlines()) <= 100
    if cmd[0] == "heads":
        assert "MFLOP/img" in r.output and "GFLOP" not in r.output
        assert not re.search(r"\s0\.000\b", r.output)  # tiny heads keep their digits


def test_help_fits_100_columns_on_a_wide_terminal() -> None:
    """A real process on a 200-column terminal (CliRunner does not size help from the terminal)."""
    import os
    import subprocess

    code = (
        "import sys\n"
        "from epcache.cli import app\n"
        "for cmd in ['', 'probe', 'extract', 'verify', 'attention']:\n"
        "    try:\n"
        "        app([*([cmd] if cmd else []), '--help'], prog_name='epcache')\n"
        "    except SystemExit:\n"
        "        pass\n"
    )
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert "Examples:" in out and max(len(line) for line in out.splitlines()) <= 100
    commands = out.split("Commands:", 1)[1].split("Usage:", 1)[0]
    assert "..." not in commands  # the command list is not truncated


def test_option_names_are_the_documented_lowercase_flags() -> None:
    """Every option's flags are lowercase `--name` as in the README, whatever typer derives from the metavar.

    typer 0.27 named an option after its metavar when the two matched (`--STORE STORE`, so `--store` was
    "No such option"); options whose metavar is their own name therefore declare their flag explicitly.
    """
    import typer.main

    group = typer.main.get_command(app)
    for name in COMMANDS:
        cmd = group.commands[name]  # type: ignore[attr-defined]
        for param in cmd.params:
            for flag in [*param.opts, *param.secondary_opts]:
                if flag.startswith("-"):
                    assert flag == flag.lower(), (name, param.name, flag)
