"""`epcache extract / probe / convert`: each option's help is its config field's doc, and the options are the fields.

One text per field: ``help(ProbeConfig)`` and ``epcache probe --help`` cannot drift apart, since
the option shows the field's doc and adds only what the command line needs ("comma list").
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from epcache._docs import leaf_fields
from epcache.cli import app
from epcache.cli.common import HelpCommand, option_record
from epcache.cli.convert import convert_config
from epcache.cli.correspond import correspond_config
from epcache.cli.export import export_config
from epcache.cli.extract import extract_config
from epcache.cli.probe import probe_config
from epcache.convert import ConvertConfig
from epcache.extract import ExtractConfig
from epcache.probe import ProbeConfig
from epcache.probe.dense.correspond_run import CorrespondConfig
from epcache.probe.solvers.export import ExportConfig

# command, its config, option -> field where the names differ, options that set no field, fields with no option
CASES = [
    ("extract", ExtractConfig, {"split": "splits"}, {"progress", "steps"}, {"hf_cache_dir", "max_pending_blocks"}),
    ("probe", ProbeConfig, {}, {"progress", "layer"},
     {"dtype", "fused", "save_heads", "prefetch", "shuffle_chunks", "eval_cache_mb"}),
    ("convert", ConvertConfig, {}, {"progress"}, set()),
    ("export", ExportConfig, {}, set(), set()),
    ("correspond", CorrespondConfig, {}, set(), set()),
]


def _command(name: str) -> HelpCommand:
    command = typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]
    assert isinstance(command, HelpCommand)
    return command


def _docs(config: type) -> dict[str, str]:
    return {f.name: str(f.metadata["doc"]) for f in leaf_fields(config)}


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


@pytest.mark.parametrize(("name", "config", "renames", "cli_only", "unflagged"), CASES, ids=[c[0] for c in CASES])
def test_every_option_help_starts_with_its_field_doc(
    name: str, config: type, renames: dict[str, str], cli_only: set[str], unflagged: set[str]
) -> None:
    command, docs = _command(name), _docs(config)
    flagged = set()
    for p in command.params:
        field = renames.get(p.name or "", p.name or "")
        if p.name in cli_only:
            assert field not in docs, f"--{p.name} is a {config.__name__} field: take its doc"
            continue
        assert field in docs, f"{name} --{p.name} is neither a {config.__name__} field nor declared CLI-only"
        shown = option_record(p, command.option_help(p))[1]
        assert shown == docs[field] or shown.startswith(docs[field] + "; ") or shown.startswith(docs[field] + "  ["), (
            p.name, shown)
        flagged.add(field)
    assert set(docs) - flagged == unflagged  # every other field has its option


@pytest.mark.parametrize(("name", "config"), [(c[0], c[1]) for c in CASES], ids=[c[0] for c in CASES])
def test_the_rendered_help_shows_every_field_doc(name: str, config: type) -> None:
    r = CliRunner().invoke(app, [name, "--help"], terminal_width=100)
    assert r.exit_code == 0, r.output
    text = _flat(r.output)
    flagged = {_command(name).renames.get(p.name or "", p.name) for p in _command(name).params}
    for field, doc in _docs(config).items():
        if field in flagged:
            assert _flat(doc) in text, (name, field)


def test_holdout_has_one_text() -> None:
    """The help of --holdout and the doc of ProbeConfig.holdout were two texts that said different things."""
    command = _command("probe")
    (holdout,) = [p for p in command.params if p.name == "holdout"]
    assert command.option_help(holdout) == _docs(ProbeConfig)["holdout"]
    assert _docs(ProbeConfig)["holdout"] in (ProbeConfig.__doc__ or "")  # what help(ProbeConfig) shows


def _parsed(name: str, args: list[str]) -> dict[str, Any]:
    command = _command(name)
    with command.make_context(name, args) as ctx:
        return dict(ctx.params)


def test_the_command_line_defaults_are_the_config_defaults() -> None:
    """Options left out give the config a Python caller gets with the same fields left out."""
    assert probe_config(_parsed("probe", ["--store", "s.zarr"])) == ProbeConfig(store="s.zarr")
    assert extract_config(_parsed("extract", ["--model", "m", "--data", "d", "--out", "o.zarr"])) == ExtractConfig(
        model="m", data="d", out="o.zarr")
    assert convert_config(_parsed("convert", ["a.zarr", "b.zarr"])) == ConvertConfig(src="a.zarr", dst="b.zarr")
    assert export_config(_parsed("export", ["s.zarr", "--out", "f.npz"])) == ExportConfig(store="s.zarr", out="f.npz")
    assert correspond_config(_parsed("correspond", ["--store", "s.zarr", "--pairs", "p.csv"])) == CorrespondConfig(
        store="s.zarr", pairs="p.csv")


def test_options_become_the_config_in_one_call() -> None:
    cfg = probe_config(_parsed("probe", ["--store", "s.zarr", "--layer", "3", "--lr", "1e-3,3e-3", "--holdout", "0"]))
    assert cfg.inputs.layers == (3,) and cfg.optim.lr == (1e-3, 3e-3) and cfg.data.holdout == 0.0
    cfg = extract_config(_parsed("extract", ["--model", "m", "--data", "d", "--out", "o.zarr", "--split", "train=tr",
                                             "--view-splits", "train,val", "--split", "val=va", "--views", "2",
                                             "--model-kwargs", '{"depth": 2}', "--workers", "0"]))
    assert cfg.splits == {"train": "tr", "val": "va"} and cfg.view_splits == ("train", "val")
    assert cfg.model_kwargs == {"depth": 2} and cfg.workers == 0
    assert convert_config(_parsed("convert", ["a.zarr", "b.zarr", "--splits", "val"])).splits == ("val",)
