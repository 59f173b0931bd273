"""Startup check that torch and torchvision are a matching pair, before either is imported.

A torch and a torchvision from different releases or different builds (CPU vs CUDA) import
cleanly up to the first compiled operator, then fail deep inside timm with ``operator
torchvision::nms does not exist`` and a long traceback, after the command has already spent
seconds loading. The installed versions are in the package metadata, which costs milliseconds to
read, so the CLI compares them first and prints one line with the command that installs a
matching pair. Where the metadata cannot tell (same versions, broken build), the import's own
``RuntimeError`` is recognised and turned into the same one line (:func:`torchvision_import_problem`).
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from collections.abc import Callable, Sequence

from epcache.errors import EpcacheError

__all__ = [
    "CPU_INSTALL",
    "TorchPairError",
    "check_torch_pair",
    "expected_torchvision_minor",
    "fix_command",
    "run_checked",
    "torch_pair_problem",
    "torchvision_import_problem",
]

CPU_INSTALL = "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu"  # README.md's line
_INDEX = "https://download.pytorch.org/whl/"
_RELEASE = re.compile(r"^(\d+)\.(\d+)")
_ACCELERATOR_TAG = re.compile(r"^(cu\d+|rocm[\d.]+|xpu)$")  # local tags that name a download index
_TORCH_MAJOR_WITH_KNOWN_PAIRS = 2  # torch 2.N pairs with torchvision 0.(N + 15): 2.13 <-> 0.28, 2.14 <-> 0.29
_MINOR_OFFSET = 15


class TorchPairError(EpcacheError, ImportError):
    """torch and torchvision installed from different releases or builds; they cannot work together."""


def expected_torchvision_minor(torch_version: str) -> int | None:
    """The torchvision minor release built against ``torch_version``; None where the pairing is unknown."""
    m = _RELEASE.match(torch_version)
    if m is None or int(m.group(1)) != _TORCH_MAJOR_WITH_KNOWN_PAIRS:
        return None
    return int(m.group(2)) + _MINOR_OFFSET


def fix_command(torch_version: str | None) -> str:
    """The install that gives a matching pair: the index of torch's own accelerator build, else the CPU one.

    Uninstalling first matters: with both packages present pip reports "already satisfied" and
    keeps the mismatched pair.
    """
    tag = _local(torch_version or "")
    install = f"pip install torch torchvision --index-url {_INDEX}{tag}" if _ACCELERATOR_TAG.match(tag) else CPU_INSTALL
    return f"pip uninstall -y torch torchvision && {install}"


def torch_pair_problem(torch_version: str | None, torchvision_version: str | None) -> str | None:
    """One line naming what does not match (None: nothing known to be wrong).

    Args:
        torch_version, torchvision_version: installed versions as the package metadata spells them
            (``"2.13.0+cpu"``), None when the package is not installed.
    """
    if torch_version is None:
        return f"torch is not installed; install it with torchvision: {fix_command(None)}"
    if torchvision_version is None:
        return (f"torchvision is not installed (torch {torch_version} is); timm needs it: "
                f"{fix_command(torch_version)}")
    pair = f"torch {torch_version} and torchvision {torchvision_version}"
    local_t, local_v = _local(torch_version), _local(torchvision_version)
    if local_t and local_v and local_t != local_v:
        return (f"{pair} are builds for different platforms ({local_t} vs {local_v}), so torchvision's "
                f"compiled operators cannot load; install a matching pair: {fix_command(torch_version)}")
    want = expected_torchvision_minor(torch_version)
    got = _RELEASE.match(torchvision_version)
    if want is not None and got is not None and (int(got.group(1)), int(got.group(2))) != (0, want):
        return (f"{pair} do not match (torch {_release(torch_version)} needs torchvision 0.{want}), so "
                f"torchvision's compiled operators cannot load; install a matching pair: {fix_command(torch_version)}")
    return None


def check_torch_pair() -> None:
    """Raise before torch is imported if the installed torch and torchvision cannot work together.

    Raises:
        TorchPairError: a missing package, different releases or different builds; the message
            holds the command that installs a matching pair.
    """
    problem = torch_pair_problem(_installed("torch"), _installed("torchvision"))
    if problem is not None:
        raise TorchPairError(problem)


def torchvision_import_problem(error: BaseException) -> str | None:
    """One line for the ``RuntimeError`` a mismatched torchvision raises on import; None for any other error."""
    text = str(error)
    if not isinstance(error, RuntimeError) or not (
        re.search(r"operator torchvision::\w+ does not exist", text) or "torchvision versions are incompatible" in text
    ):
        return None
    first = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    torch_version, vision_version = _installed("torch"), _installed("torchvision")
    return (f"torchvision cannot load its compiled operators ({first}): torch {torch_version} and torchvision "
            f"{vision_version} are not a matching build; install a matching pair: {fix_command(torch_version)}")


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _local(version: str) -> str:
    return version.partition("+")[2]


def _release(version: str) -> str:
    m = _RELEASE.match(version)
    return m.group(0) if m else version


def run_checked(app: Callable[[], object], *, light_commands: Sequence[str] = ()) -> None:
    """Run the CLI ``app`` behind the pair check; a mismatch exits with one line on stderr and code 2.

    The check is skipped for ``--help``, ``--version`` and ``light_commands`` (commands that never
    import torch), so a broken install can still be inspected. A ``RuntimeError`` of a mismatched
    torchvision import that the metadata did not predict gets the same one line instead of its traceback.
    """
    import typer

    args = sys.argv[1:]
    command = next((a for a in args if not a.startswith("-")), None)
    problem: str | None = None
    if command is not None and command not in light_commands and not {"--help", "-h"} & set(args):
        try:
            check_torch_pair()
        except TorchPairError as e:
            problem = str(e)
    if problem is None:
        try:
            app()
            return
        except RuntimeError as e:
            problem = torchvision_import_problem(e)
            if problem is None:
                raise
    typer.secho(f"error: {problem}", err=True, fg=typer.colors.RED)
    raise SystemExit(2)
