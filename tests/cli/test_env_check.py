"""The startup check of the torch/torchvision pair: one line and exit 2 before any torch import."""

from __future__ import annotations

import importlib.metadata
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import epcache.cli
from epcache._env_check import (
    CPU_INSTALL,
    TorchPairError,
    check_torch_pair,
    expected_torchvision_minor,
    fix_command,
    torch_pair_problem,
)
from epcache.errors import EpcacheError

README = Path(__file__).resolve().parents[2] / "README.md"


def fake_versions(monkeypatch: pytest.MonkeyPatch, torch: str | None, torchvision: str | None) -> None:
    """Installed versions as importlib.metadata reports them; None: the package is not installed."""
    real = importlib.metadata.version
    table = {"torch": torch, "torchvision": torchvision}

    def version(name: str) -> str:
        if name not in table:
            return real(name)
        if table[name] is None:
            raise importlib.metadata.PackageNotFoundError(name)
        return str(table[name])

    monkeypatch.setattr(importlib.metadata, "version", version)


def readme_cpu_install() -> str:
    """The README's CPU install command, as written between backquotes."""
    commands = re.findall(r"`(pip install [^`]*download\.pytorch\.org/whl/cpu[^`]*)`", README.read_text())
    assert len(commands) == 1, commands
    return commands[0]


def test_readme_cpu_install_names_a_matching_pair_from_one_index() -> None:
    words = shlex.split(readme_cpu_install())
    assert words[:2] == ["pip", "install"]
    indexes = [words[i + 1] for i, w in enumerate(words) if w in ("--index-url", "-i")]
    assert indexes == ["https://download.pytorch.org/whl/cpu"]  # one index: both packages from the same build
    assert not any(w in ("--extra-index-url",) for w in words)
    skip = {i + 1 for i, w in enumerate(words) if w in ("--index-url", "-i")}
    packages = [w for i, w in enumerate(words[2:], 2) if not w.startswith("-") and i not in skip]
    pins = dict(re.match(r"^([A-Za-z0-9_.-]+)(?:==(.+))?$", p).groups() for p in packages)  # type: ignore[union-attr]
    assert set(pins) == {"torch", "torchvision"}
    if pins["torch"] and pins["torchvision"]:  # pinned versions must be a pair that works together
        assert torch_pair_problem(pins["torch"], pins["torchvision"]) is None
    assert readme_cpu_install() == CPU_INSTALL  # the error message quotes the README's command


@pytest.mark.parametrize(
    ("torch", "vision"),
    [("2.14.1", "0.29.1"), ("2.13.0+cpu", "0.28.0+cpu"), ("2.14.0+cpu", "0.29.0"), ("2.13.0+cu121", "0.28.1+cu121"),
     ("2.14.0.dev20250601+cpu", "0.29.0.dev20250601+cpu"), ("3.0.0", "0.40.0")],
)
def test_matching_pairs_pass(monkeypatch: pytest.MonkeyPatch, torch: str, vision: str) -> None:
    fake_versions(monkeypatch, torch, vision)
    check_torch_pair()  # no error
    assert torch_pair_problem(torch, vision) is None


@pytest.mark.reliability_bad_input
@pytest.mark.parametrize(
    ("torch", "vision", "named", "index"),
    [
        ("2.13.0+cpu", "0.28.0+cu121", "(cpu vs cu121)", "whl/cpu"),
        ("2.13.0", "0.29.0", "torch 2.13 needs torchvision 0.28", "whl/cpu"),
        ("2.14.1+cu121", "0.28.0+cu121", "torch 2.14 needs torchvision 0.29", "whl/cu121"),
        ("2.14.1+cu124", "0.29.1+cu121", "(cu124 vs cu121)", "whl/cu124"),
        ("2.14.1", None, "torchvision is not installed", "whl/cpu"),
    ],
)
def test_mismatched_pairs_name_the_problem_and_the_fix(monkeypatch: pytest.MonkeyPatch, torch: str, vision: str | None,
                                                      named: str, index: str) -> None:
    fake_versions(monkeypatch, torch, vision)
    with pytest.raises(TorchPairError) as info:
        check_torch_pair()
    message = str(info.value)
    assert isinstance(info.value, EpcacheError) and "\n" not in message
    assert named in message
    assert f"pip uninstall -y torch torchvision && pip install torch torchvision --index-url " \
           f"https://download.pytorch.org/{index}" in message
    if vision is not None:
        assert f"torch {torch} and torchvision {vision}" in message


def test_known_pairs_and_fix_commands() -> None:
    assert expected_torchvision_minor("2.14.1") == 29 and expected_torchvision_minor("2.13.0+cpu") == 28
    assert expected_torchvision_minor("1.13.1") is None  # the 2.x rule only
    assert fix_command("2.13.0+cpu").endswith(CPU_INSTALL) and fix_command("2.13.0").endswith(CPU_INSTALL)
    assert fix_command("2.13.0+cu118").endswith("--index-url https://download.pytorch.org/whl/cu118")


def test_this_environment_is_a_matching_pair() -> None:
    check_torch_pair()


def recording_app(calls: list[str], error: BaseException | None = None) -> Callable[[], None]:
    def app() -> None:
        calls.append("ran")
        if error is not None:
            raise error

    return app


@pytest.mark.reliability_bad_input
def test_main_refuses_a_mismatch_in_one_line_before_the_command(monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    fake_versions(monkeypatch, "2.13.0+cpu", "0.28.0+cu121")
    calls: list[str] = []
    monkeypatch.setattr(epcache.cli, "app", recording_app(calls))
    monkeypatch.setattr(sys, "argv", ["epcache", "demo", "--quick"])
    with pytest.raises(SystemExit) as info:
        epcache.cli.main()
    assert info.value.code == 2 and calls == []  # the command never started
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("error: torch 2.13.0+cpu and torchvision 0.28.0+cu121") and CPU_INSTALL in err


@pytest.mark.parametrize("argv", [["info", "s.zarr"], ["ls", "."], ["demo", "--help"], ["--version"], []])
def test_main_lets_light_commands_and_help_run_on_a_broken_pair(monkeypatch: pytest.MonkeyPatch,
                                                                argv: list[str]) -> None:
    fake_versions(monkeypatch, "2.13.0+cpu", "0.28.0+cu121")
    calls: list[str] = []
    monkeypatch.setattr(epcache.cli, "app", recording_app(calls))
    monkeypatch.setattr(sys, "argv", ["epcache", *argv])
    epcache.cli.main()
    assert calls == ["ran"]


@pytest.mark.reliability_bad_input
def test_main_turns_the_torchvision_operator_error_into_one_line(monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Same versions, broken build: the metadata passes and the import's RuntimeError is recognised."""
    fake_versions(monkeypatch, "2.14.1+cpu", "0.29.1+cpu")
    calls: list[str] = []
    error = RuntimeError("operator torchvision::nms does not exist")
    monkeypatch.setattr(epcache.cli, "app", recording_app(calls, error))
    monkeypatch.setattr(sys, "argv", ["epcache", "demo"])
    with pytest.raises(SystemExit) as info:
        epcache.cli.main()
    assert info.value.code == 2 and calls == ["ran"]
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "torchvision::nms does not exist" in err and "not a matching build" in err and CPU_INSTALL in err


def test_main_keeps_other_runtime_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug elsewhere is not disguised as an install problem: its traceback stays."""
    fake_versions(monkeypatch, "2.14.1", "0.29.1")
    monkeypatch.setattr(epcache.cli, "app", recording_app([], RuntimeError("shape mismatch in a head")))
    monkeypatch.setattr(sys, "argv", ["epcache", "probe"])
    with pytest.raises(RuntimeError, match="shape mismatch"):
        epcache.cli.main()
