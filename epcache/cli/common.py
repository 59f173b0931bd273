"""CLI plumbing shared by the command modules: git/pip-style help (`HelpCommand`), one-line user errors.

typer's own help renders every flag with a ``<bool>`` metavar (``--help`` included), required
arguments as ``{rundir}`` and, in rich mode, eats ``[plot]`` in help text as markup. Commands
built with :class:`HelpCommand` print instead:

    Usage: epcache report [OPTIONS] RUNDIR
    ...
      --out DIR                 Where to write report.md and the figures.  [default: RUNDIR/report]
      --figures / --no-figures  Render PNG figures (needs matplotlib: pip install 'epcache[plot]').

Defaults appear one way only, ``[default: X]`` at the end of the help; a flag's default is the
flag that is on. Options without a value (``None``) show no default unless they pass a text
(``show_default="32 (EP)"``) that says what happens.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from epcache.errors import EpcacheError

__all__ = [
    "STORE_HELP", "ChunkSamplesOption", "CompressorOption", "HelpCommand", "ShardSamplesOption", "option_record",
    "user_errors",
]

STORE_HELP = "Feature store: a .zarr directory, an .h5 file or a URL."

# storage options that extract and convert share: one wording, one default style
ChunkSamplesOption = Annotated[
    int | None, typer.Option(metavar="N", help="Samples per chunk.", show_default="a few MB per chunk")
]
ShardSamplesOption = Annotated[
    int | None, typer.Option(metavar="N", help="Samples per zarr shard.", show_default="automatic")
]
CompressorOption = Annotated[
    str | None, typer.Option(metavar="CODEC", help="zstd[:N] / blosc[:N] (zarr), gzip / lzf (h5).", show_default="none")
]


class HelpCommand(TyperCommand):
    """A typer command whose usage line and option list read as git's or pip's do."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            if p.param_type_name == "argument":
                name = _arg_name(p)
                pieces.append(name if p.required else f"[{name}]")
        return pieces

    def format_help(self, ctx: Any, formatter: Any) -> None:
        """Usage, help text, options, epilog: click's plain layout, never typer's rich panels."""
        self.format_usage(ctx, formatter)
        self.format_help_text(ctx, formatter)
        self.format_options(ctx, formatter)
        self.format_epilog(ctx, formatter)

    def format_epilog(self, ctx: Any, formatter: Any) -> None:
        """The epilog verbatim (examples keep their line breaks and indentation)."""
        if self.epilog:
            formatter.write_paragraph()
            for line in self.epilog.strip("\n").splitlines():
                formatter.write(f"  {line}\n" if line else "\n")

    def format_options(self, ctx: Any, formatter: Any) -> None:
        params = self.get_params(ctx)
        args = [option_record(p) for p in params if p.param_type_name == "argument"]
        opts = [option_record(p) for p in params if p.param_type_name == "option" and not p.hidden]
        if args:
            with formatter.section("Arguments"):
                formatter.write_dl(args)
        if opts:
            with formatter.section("Options"):
                formatter.write_dl(opts)


def option_record(p: Any) -> tuple[str, str]:
    """(``--name METAVAR`` or ``ARG``, help text with ``[default: X]``) for one click parameter."""
    if p.param_type_name == "argument":
        return _arg_name(p), str(getattr(p, "help", "") or "")
    if p.is_flag:  # an off-by-default switch shows as git's do (--resume); --no-resume still parses
        # a tri-state pair (default None: decided at run time) shows both spellings
        shown = (p.opts, p.secondary_opts) if p.default or p.default is None else (p.opts,)
        names = " / ".join(", ".join(o) for o in shown if o)
    else:
        names = f"{', '.join(p.opts)} {p.metavar or _value_name(p)}"
    help_text = p.help or ""
    default = _default_text(p)
    if default:
        help_text = f"{help_text}  [default: {default}]".strip()
    if p.required:
        help_text = f"{help_text}  [required]".strip()
    return names, help_text


def _arg_name(p: Any) -> str:
    return p.metavar or (p.name or "ARG").upper()


def _value_name(p: Any) -> str:
    return (p.name or "VALUE").upper()


def _default_text(p: Any) -> str:
    if isinstance(p.show_default, str):
        return p.show_default
    if p.show_default is False or p.name == "help":
        return ""
    value: Any = p.default
    if p.is_flag:
        return p.opts[0] if value and p.secondary_opts else ""  # a switch is off unless given
    if value is None or callable(value) or value == ():
        return ""
    if isinstance(value, list | tuple):
        return ",".join(str(v) for v in value)
    return str(value)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn an `EpcacheError` (or an OS error a user can cause) into one red line on stderr and exit code 2."""
    from epcache.store.files import os_errors  # lazy: loads numpy, zarr only when this runs

    try:
        with os_errors(action="epcache"):  # a full disk, no permission, a read-only mount: one line too
            yield
    except EpcacheError as e:
        typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=2) from None
