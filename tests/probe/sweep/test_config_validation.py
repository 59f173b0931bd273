"""Every numeric and boolean ProbeConfig field refuses the same bad values, the same way, from every door.

The doors: ``ProbeConfig(...)`` (and ``dataclasses.replace``, how library users change a config), a
``--grid`` TOML file (top level and ``[[grid]]`` tables) and the ``epcache probe`` command line.
The field list and each field's bad values come from the config class itself (annotations and
declared ranges), so a field added later is covered without touching this file.

Also: trained heads refuse a store with fewer than 2 classes before any training, with the
message solver heads give.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from probe_helpers import write_store
from typer.testing import CliRunner

from epcache.cli import app
from epcache.errors import ConfigError
from epcache.probe import ProbeConfig, probe_store
from epcache.probe.config.fields import FieldKind, field_kinds
from epcache.probe.sweep.grid import resolve_request
from epcache.store import open_store

pytestmark = pytest.mark.reliability_bad_input

runner = CliRunner()
KINDS = field_kinds(ProbeConfig)


def _numeric(kind: FieldKind) -> bool:
    return any(k in (int, float, bool) for k in (*kind.scalars, *kind.elements))


def _bad_values(kind: FieldKind) -> list[Any]:
    """Values the field must refuse: wrong types, non-finite numbers, and just outside its declared range."""
    kinds = kind.scalars or kind.elements
    if bool in kinds:
        return [v for v in (1, 0.0, math.nan, "yes") if not (isinstance(v, str) and str in kinds)]
    out: list[Any] = [math.nan, math.inf, -math.inf, True, False]
    if str not in kinds:
        out.append("fast")
    if float not in kinds:
        out.append(2.5)  # a fraction where an integer belongs
    r = kind.range
    if r is not None:
        step = 1 if float not in kinds else 0.5
        out += [r.ge - step] if r.ge is not None else []
        out += [r.gt] if r.gt is not None else []
        out += [r.le + step] if r.le is not None else []
        out += [r.lt] if r.lt is not None else []
    return out


CASES = [(name, value) for name, kind in KINDS.items() if _numeric(kind) for value in _bad_values(kind)]


def _cli_params() -> dict[str, Any]:
    command = typer.main.get_command(app).commands["probe"]  # type: ignore[attr-defined]
    return {p.name: p for p in command.params}


CLI = _cli_params()


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


def _cli_text(value: Any) -> str:
    return _toml(value).strip('"')


def _refusal(**kw: Any) -> str:
    with pytest.raises(ConfigError) as err:
        ProbeConfig(store="s.zarr", **kw)
    return str(err.value)


def test_every_numeric_field_is_covered_and_declares_its_range() -> None:
    numeric = {name for name, kind in KINDS.items() if _numeric(kind)}
    assert {"lr", "epochs", "batch_size", "holdout", "in_memory", "compile", "shots", "k", "tries"} <= numeric
    assert {name for name, _ in CASES} == numeric
    for name in numeric:
        kind = KINDS[name]
        if bool not in (kind.scalars or kind.elements):
            assert kind.range is not None, f"{name}: declare its range next to the field (doc(..., check=Range(...)))"


@pytest.mark.parametrize(("name", "value"), CASES, ids=[f"{n}={v!r}" for n, v in CASES])
def test_bad_value_is_refused_the_same_way_from_every_door(name: str, value: Any, tmp_path: Path) -> None:
    kind = KINDS[name]
    message = _refusal(**{name: value})
    assert message.startswith(f"{name} {kind.rule()}") and "; " not in message, message
    if kind.elements:  # a list field: the value alone or inside a list, the same refusal
        assert _refusal(**{name: [value]}) == message
    with pytest.raises(ConfigError) as err:  # the library's other door: changing a valid config
        dataclasses.replace(ProbeConfig(store="s.zarr"), **{name: value})
    assert str(err.value) == message
    # the grid file: the top level and a [[grid]] table, named with the file
    literal = f"[{_toml(value)}]" if kind.elements and not kind.scalars else _toml(value)
    tables = f'[[grid]]\nhead = "linear"\n[[grid]]\nhead = "ep"\n{name} = {literal}\n'
    top = f"{name} = {literal}\n"
    for file, where, text in (("top.toml", "top level", top), ("table.toml", "[[grid]] #2", tables)):
        grid = tmp_path / file
        grid.write_text(text, encoding="utf-8")
        with pytest.raises(ConfigError) as err:
            resolve_request(ProbeConfig(store="s.zarr", grid=str(grid)))
        assert str(err.value) == f"grid file {grid}, {where}: {message}"
    # the command line: exit 2, one line, the same message (text spells a boolean as 'true')
    param = CLI.get(name)
    if param is None:
        return  # not a command-line option (prefetch, fused, ...): grid file and Python only
    if param.is_flag:
        assert bool in (kind.scalars or kind.elements)  # --compile/--no-compile carries no value to refuse
        return
    out = tmp_path / "run"
    r = runner.invoke(app, ["probe", "--store", str(tmp_path / "s.zarr"), f"--{name.replace('_', '-')}",
                            _cli_text(value), "--out", str(out), "--no-progress"])
    assert r.exit_code == 2, r.output
    line = r.output.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line, line
    text_allowed = str in (kind.scalars or kind.elements)
    if isinstance(value, bool) and text_allowed:  # 'true' is text, and text here is a layer spec: refused as one
        assert line == (f"error: layer {_cli_text(value)!r} is not a block index (-1 = the model's last), "
                        "a slice like -4:, 'last' or 'all'"), line
    elif isinstance(value, bool):  # the command line spells a boolean as text
        assert line == f"error: {message.split(', got ')[0]}, got {_cli_text(value)!r}", line
    else:
        assert line == f"error: {message}", line
    assert not out.exists()


def test_valid_values_pass_every_door_alike(tmp_path: Path) -> None:
    grid = tmp_path / "g.toml"
    grid.write_text('epochs = 3\nholdout = 0\nlr = "1e-3,3e-3"\nbatch_size = 2.0\nin_memory = true\n', encoding="utf-8")
    base = resolve_request(ProbeConfig(store="s.zarr", grid=str(grid))).config
    lib = ProbeConfig(store="s.zarr", epochs=3, holdout=0, lr=(1e-3, 3e-3), batch_size=2, in_memory=True)
    cli = ProbeConfig.from_cli(store="s.zarr", epochs="3", holdout="0", lr="1e-3,3e-3", batch_size="2",
                               in_memory=True)
    assert dataclasses.replace(base, grid=None) == lib == cli
    assert (lib.optim.epochs, lib.data.holdout, lib.optim.batch_size) == (3, 0.0, 2) and type(lib.data.holdout) is float
    assert type(base.optim.batch_size) is int and base.optim.lr == lib.optim.lr == cli.optim.lr == (1e-3, 3e-3)
    assert ProbeConfig(store="s.zarr", seeds=np.arange(2), shots=[5]).optim.seeds == (0, 1)  # numpy ints are ints


@pytest.fixture(scope="module", params=[1, 2], ids=["one class listed", "two listed, one with samples"])
def one_class_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    classes = ["only", "absent"][: request.param]
    y = np.zeros(48, np.int64)
    path = write_store(tmp_path_factory.mktemp("one") / "s.zarr", n_train=48, n_val=16, num_classes=len(classes),
                       classes=classes, train_labels=y, val_labels=y[:16])
    return path, len(classes)


@pytest.mark.parametrize("head", ["linear", "ep", "ridge"])
def test_one_class_store_is_refused_before_training(one_class_store: tuple[Path, int], head: str,
                                                    tmp_path: Path) -> None:
    store, listed = one_class_store
    out = tmp_path / "run"
    cfg = ProbeConfig(store=str(store), head=head, queries=(4,) if head == "ep" else (), epochs=1, batch_size=8,
                      lr=(0.01,), optimizer=("adamw",), device="cpu", out=str(out))
    with pytest.raises(ConfigError) as err:
        probe_store(cfg, progress=False)
    assert str(err.value) == (
        f"the train split has 1 class(es) with samples ({listed} listed); probe heads (trained and solver: knn, "
        "ridge, logreg, ncm) need at least 2. Extract a split with several classes"
    )
    assert not out.exists()  # refused before the run directory, a checkpoint or a row


def test_one_class_cli_exits_2(one_class_store: tuple[Path, int], tmp_path: Path) -> None:
    r = runner.invoke(app, ["probe", "--store", str(one_class_store[0]), "--head", "linear", "--epochs", "1",
                            "--batch-size", "8", "--device", "cpu", "--out", str(tmp_path / "r"), "--no-progress"])
    assert r.exit_code == 2, r.output
    assert "need at least 2" in r.output and len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert not (tmp_path / "r" / "results.jsonl").exists()


def test_rows_left_with_one_class_are_refused_for_trained_and_solver_heads(tmp_path: Path) -> None:
    y = np.zeros(48, np.int64)
    y[[5, 6]] = 1  # class 1: two samples, in one or two of the three blocks
    full = write_store(tmp_path / "full.zarr", n_train=48, n_val=16, num_classes=2, train_labels=y,
                       val_labels=np.arange(16) % 2, chunk_samples=16)
    with open_store(full) as st:  # the stored order is shuffled: find the blocks holding class 1
        labels = np.asarray(st.read_labels("train"))
        ranges = [st.block_range("train", b) for b in range(st.split("train").num_blocks)]
    blocks = [b for b, (lo, hi) in enumerate(ranges) if (labels[lo:hi] == 1).any()]
    assert len(blocks) < 3
    store = write_store(tmp_path / "s.zarr", n_train=48, n_val=16, num_classes=2, train_labels=y,
                        val_labels=np.arange(16) % 2, chunk_samples=16,
                        skip_blocks=[("train", layer, b) for layer in (0, 1) for b in blocks])
    messages = set()
    for head in ("linear", "ncm"):
        with pytest.raises(ConfigError) as err:
            probe_store(ProbeConfig(store=str(store), head=head, allow_incomplete=True, epochs=1, batch_size=8,
                                    lr=(0.01,), device="cpu"), progress=False)
        messages.add(str(err.value))
    assert messages == {
        "the rows left to train on (after the holdout, the low-shot selection and unwritten blocks) hold 1 class(es) "
        "of the 2 in the train split; probe heads (trained and solver) need at least 2. Finish the extraction, or "
        "lower --holdout / select more rows per class (--shots, --fraction)"
    }
