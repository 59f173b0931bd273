"""Keeping paths that a dataset's own records name inside the dataset's directory.

CSV rows and Hugging Face image cells both name image files by path. The dataset may come from
anyone, so a path is data, not an instruction: an absolute path or a ``..`` climb would make
epcache read (and store features of) any file the user can read. One function decides, so CSV
and HF sources refuse exactly the same paths.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from epcache.errors import ConfigError

__all__ = ["confined_path"]


def confined_path(root: Path, rel: str, where: str, *, what: str = "CSV paths", fix: str = "") -> PurePosixPath:
    """``rel`` as a POSIX path under ``root``, refusing anything that resolves outside it.

    ``root`` must be resolved. The check is lexical first (absolute, ``..``), then through
    symlinks, so a link inside the dataset that points out of it is refused too.

    Args:
        root: the directory paths must stay under.
        rel: the path as the record gives it (either slash direction).
        where: the record, for messages (split, file, row).
        what: the kind of path, for messages ("CSV paths", "image paths").
        fix: a sentence appended to every refusal (e.g. the flag that allows outside paths).

    Raises:
        ConfigError: an empty path, a NUL byte, an absolute path, a ``..`` part, or a symlink
            leading outside ``root``.
    """
    tail = f"; {fix}" if fix else ""
    if "\x00" in rel or not rel:
        raise ConfigError(f"{where}: the path {rel!r} is empty or holds a NUL byte; expected a path relative to {root}")
    p = PurePosixPath(rel.replace("\\", "/"))
    if p.is_absolute() or Path(rel).is_absolute():
        raise ConfigError(f"{where}: {rel!r} is absolute; {what} are relative to the data root {root}{tail}")
    if ".." in p.parts:
        raise ConfigError(f"{where}: {rel!r} climbs out with '..'; {what} must stay under {root}{tail}")
    if not (root / Path(*p.parts)).resolve().is_relative_to(root):
        raise ConfigError(f"{where}: {rel!r} is a symlink that leads outside the data root {root}{tail}")
    return p
