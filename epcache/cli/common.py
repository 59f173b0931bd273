"""CLI plumbing shared by the command modules: git/pip-style help (`HelpCommand`), help texts taken from
the config fields' docs (`documented_by`), one-line user errors (`user_errors`).

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

An option named like a field of the command's config (``--holdout`` and ``ProbeConfig.data.holdout``)
shows that field's doc, the one text ``help(ProbeConfig)`` shows too, followed by the option's own
``help=`` when it has one (what only the command line needs: "comma list"). The config class is
imported when help is shown, not when the app is built, since importing it loads torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

import typer
from typer.core import TyperCommand

from epcache._docs import leaf_fields
from epcache._fs.oserror import os_errors
from epcache.errors import EpcacheError

__all__ = [
    "RUNDIR_HELP", "STORE_HELP", "HelpCommand", "config_options", "documented_by", "option_record", "user_errors",
]

STORE_HELP = "Feature store: a .zarr directory, an .h5 file or a URL."
RUNDIR_HELP = "Run directory written by `epcache probe --out RUNDIR`."


class HelpCommand(TyperCommand):
    """A typer command whose usage line and option list read as git's or pip's do.

    :meth:`config` (see :func:`documented_by`) is the dataclass whose field docs are the help of the
    options of the same name; ``renames`` maps an option to its field where the names differ.
    """

    renames: ClassVar[Mapping[str, str]] = {}

    def config(self) -> Any:
        """The config dataclass whose field docs the options show (None: each option has its own help)."""
        return None

    def field_docs(self) -> dict[str, str]:
        """Option name -> the doc of the config field it sets (empty without a config)."""
        config = self.config()
        if config is None:
            return {}
        docs = {f.name: str(f.metadata.get("doc", "")) for f in leaf_fields(config)}
        names = {p.name: self.renames.get(p.name or "", p.name) for p in self.params}
        return {name: docs[field] for name, field in names.items() if name and field in docs}

    def option_help(self, p: Any, docs: Mapping[str, str] | None = None) -> str:
        """The help shown for one parameter: its field's doc, then its own text (see the module docstring)."""
        own = str(getattr(p, "help", "") or "")
        doc = (self.field_docs() if docs is None else docs).get(p.name, "")
        return f"{doc}; {own}" if doc and own else doc or own

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
        docs = self.field_docs()
        args = [option_record(p, self.option_help(p, docs)) for p in params if p.param_type_name == "argument"]
        opts = [option_record(p, self.option_help(p, docs))
                for p in params if p.param_type_name == "option" and not p.hidden]
        if args:
            with formatter.section("Arguments"):
                formatter.write_dl(args)
        if opts:
            with formatter.section("Options"):
                formatter.write_dl(opts)


def documented_by(loader: Callable[[], Any], **renames: str) -> type[HelpCommand]:
    """A :class:`HelpCommand` whose options show the docs of ``loader()``'s fields (``renames``: option=field)."""

    class ConfigHelpCommand(HelpCommand):
        def config(self) -> Any:
            return loader()

    ConfigHelpCommand.renames = renames
    return ConfigHelpCommand


def config_options(options: Mapping[str, Any], cli_only: tuple[str, ...] = (), **renames: str) -> dict[str, Any]:
    """The parsed options of a command as config fields: ``cli_only`` ones dropped, ``renames`` (option=field)."""
    return {renames.get(k, k): v for k, v in options.items() if k not in cli_only}


def option_record(p: Any, help_text: str | None = None) -> tuple[str, str]:
    """(``--name METAVAR`` or ``ARG``, help text with ``[default: X]``) for one click parameter.

    ``help_text`` replaces the parameter's own help (a config field's doc, :meth:`HelpCommand.option_help`).
    """
    help_text = str(getattr(p, "help", "") or "") if help_text is None else help_text
    if p.param_type_name == "argument":
        return _arg_name(p), help_text
    if p.is_flag:  # an off-by-default switch shows as git's do (--resume); --no-resume still parses
        # a tri-state pair (default None: decided at run time) shows both spellings
        shown = (p.opts, p.secondary_opts) if p.default or p.default is None else (p.opts,)
        names = " / ".join(", ".join(o) for o in shown if o)
    else:
        names = f"{', '.join(p.opts)} {p.metavar or _value_name(p)}"
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
    try:
        with os_errors(action="epcache"):  # a full disk, no permission, a read-only mount: one line too
            yield
    except EpcacheError as e:
        typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=2) from None
