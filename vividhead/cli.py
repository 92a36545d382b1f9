"""The ``vividhead`` command line. Each part registers its own subcommands:

* ``curate``             -- :mod:`vividhead.curation.cli`
* ``card``, ``publish``  -- :mod:`vividhead.datasets_card.cli`
* ``infer``, ``serve``   -- :mod:`vividhead.inference.cli`
* ``train ...``          -- :mod:`vividhead.training.cli`
* ``eval ...``           -- :mod:`vividhead.evaluation.cli`

A part whose optional dependencies are not installed (``pip install vividhead[curation]`` etc.)
still shows its commands; running one prints which extra to install.

Errors: an expected failure (:class:`vividhead.errors.UserError`, which
:class:`vividhead.config.ConfigError` is) prints one line ``error: <message>`` on stderr and exits
with code 2; ``vividhead --debug ...`` or ``VIVIDHEAD_DEBUG=1`` shows its traceback instead.
A usage error (a wrong value type, a missing argument, an unknown option or command: click's
``UsageError`` and its subclasses, ``typer.BadParameter`` included) is one line too,
``error: <command path>: <click's message> (see '<command path> --help')``, exit code 2;
with ``--debug`` it is click's usage text instead. Unexpected exceptions always show their
traceback. ``vividhead --version`` prints the version.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Annotated, Optional

import typer

from vividhead.errors import UserError

#: Set by ``--debug`` on the root command (or ``VIVIDHEAD_DEBUG=1``): show tracebacks of expected errors.
_debug = False

#: (module with ``register(app)``, the extra that installs what it needs).
SUBCOMMAND_MODULES: tuple[tuple[str, str], ...] = (
    ("vividhead.curation.cli", "curation"),
    ("vividhead.datasets_card.cli", "curation"),
    ("vividhead.inference.cli", "serve"),
    ("vividhead.training.cli", "train"),
    ("vividhead.evaluation.cli", "eval"),
)


def build_app() -> typer.Typer:
    """A fresh Typer app with every part's subcommands registered.

    Raises:
        ImportError: a part's CLI module itself fails to import for a reason other than a
            missing optional dependency (a bug, reported as such).
    """
    app = typer.Typer(
        no_args_is_help=True,
        add_completion=False,
        help="Curate talking-head datasets, train and serve streaming talking-head models.",
    )

    @app.callback()
    def _root(
        debug: Annotated[bool, typer.Option(
            "--debug", envvar="VIVIDHEAD_DEBUG",
            help="Show the traceback of expected errors too (also VIVIDHEAD_DEBUG=1).")] = False,
        version: Annotated[bool, typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit.")] = False,
    ) -> None:
        """vividhead: curate, train, evaluate and serve streaming talking-head models."""
        global _debug
        _debug = _debug or debug

    for module, _extra in SUBCOMMAND_MODULES:
        importlib.import_module(module).register(app)
    return app


def version() -> str:
    """The installed package's version (``unknown`` when vividhead is not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _version

    try:
        return _version("vividhead")
    except PackageNotFoundError:
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"vividhead {version()}")
        raise typer.Exit()


def _env_debug() -> bool:
    return os.environ.get("VIVIDHEAD_DEBUG", "").strip().lower() not in ("", "0", "false", "no", "off")


def one_line(exc: BaseException) -> str:
    """``exc``'s message as one line (its lines joined with ``; ``), or its type name when empty."""
    return _join_lines(str(exc)) or type(exc).__name__


def _join_lines(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return "; ".join(lines)


def _click_class(name: str) -> type[BaseException]:
    """The click exception class ``name`` of the click that Typer runs on (Typer >= 0.20 ships its own
    copy of click, whose exceptions are not the ``click`` package's): found on ``typer.BadParameter``."""
    return next(cls for cls in typer.BadParameter.__mro__ if cls.__name__ == name)


def usage_error_line(exc: BaseException, app: typer.Typer, argv: list[str], prog_name: str = "vividhead") -> str:
    """A click usage error as one line: ``<command path>: <click's message> (see '<path> --help')``.

    The command path is the error's context's; an error raised without one (click's parser raises
    ``Option '--x' requires an argument.`` so) names the deepest command that ``argv`` spells out.
    """
    ctx = getattr(exc, "ctx", None)
    message = _join_lines(exc.format_message()) or type(exc).__name__  # type: ignore[attr-defined]
    if ctx is not None:
        path = ctx.command_path
        help_option = ctx.help_option_names[0] if ctx.command.get_help_option(ctx) is not None else None
    else:
        path, help_option = " ".join([prog_name, *_subcommand_names(app, argv)]), "--help"
    return f"{path}: {message}" + (f" (see '{path} {help_option}')" if help_option else "")


def _subcommand_names(app: typer.Typer, argv: list[str]) -> list[str]:
    """The (sub)command names that lead ``argv`` (options skipped; the groups take only flags)."""
    import typer.main

    command, names = typer.main.get_command(app), []
    for token in argv:
        if token.startswith("-"):
            continue
        sub = getattr(command, "commands", {}).get(token)
        if sub is None:
            break
        command = sub
        names.append(token)
    return names


def _debug_requested(exc: BaseException) -> bool:
    """``--debug`` given on the root command, even when the error came before its callback ran."""
    ctx = getattr(exc, "ctx", None)
    return _debug or bool(ctx is not None and ctx.find_root().params.get("debug"))


def _print_error(line: str) -> None:
    # Printed here, not by sys.excepthook: torch.distributed prefixes every traceback line with
    # ``[rankN]:`` once a process group exists, and the trainers create one even on one process.
    sys.stderr.flush()
    print(f"error: {line}", file=sys.stderr, flush=True)


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point of the ``vividhead`` script (``argv`` defaults to ``sys.argv[1:]``): every
    part's commands (:func:`build_app`) run by :func:`run_app`.

    Raises:
        SystemExit: always; code 2 after an expected error's or a usage error's one line.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    run_app(build_app(), argv, "vividhead")


def run_app(app: typer.Typer, argv: Optional[list[str]] = None, prog_name: str = "vividhead") -> None:
    """Run ``app`` as the entry points do (``vividhead``, ``python -m vividhead.curation`` under
    ``ray job submit``, ``python -m vividhead.datasets_card``), ``argv`` defaulting to ``sys.argv[1:]``.

    The app runs with click's ``standalone_mode=False``, so its errors come here rather than to
    Typer's boxed error panel: an expected error (:class:`UserError`) and a usage error
    (:func:`usage_error_line`) are one line each, exit code 2; ``VIVIDHEAD_DEBUG=1`` (or the root
    command's ``--debug``) shows the traceback or click's usage text instead.
    A bare group (``vividhead``, ``vividhead train``) still prints its help and exits with code 2,
    ``typer.Exit(n)`` (``--help``, ``--version``, a command's own exit) still exits with ``n``, Ctrl-C
    with 130 and an abort with 1, as in standalone mode. Commands return None: an int returned by
    the app is the code of an Exit (click's non-standalone convention).

    Raises:
        SystemExit: always; code 2 after an expected error's or a usage error's one line.
    """
    global _debug
    _debug = _env_debug()
    click_exception, usage_error = _click_class("ClickException"), _click_class("UsageError")
    try:
        rv = app(args=argv, prog_name=prog_name, standalone_mode=False)
    except UserError as exc:
        if _debug:
            raise
        _print_error(one_line(exc))
        raise SystemExit(getattr(exc, "exit_code", 2)) from None
    except usage_error as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # the help is the message (Typer's rich help: printed already)
            if exc.format_message().strip():  # type: ignore[attr-defined]
                exc.show()  # type: ignore[attr-defined]
        elif _debug_requested(exc):
            exc.show()  # type: ignore[attr-defined]  # click's usage, hint and message
        else:
            _print_error(usage_error_line(exc, app, sys.argv[1:] if argv is None else argv, prog_name))
        raise SystemExit(exc.exit_code) from None  # type: ignore[attr-defined]
    except click_exception as exc:  # not a usage error (e.g. a file that cannot be opened): its message
        _print_error(_join_lines(exc.format_message()) or type(exc).__name__)  # type: ignore[attr-defined]
        raise SystemExit(exc.exit_code) from None  # type: ignore[attr-defined]
    except typer.Abort:
        sys.stderr.flush()
        print("Aborted.", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    raise SystemExit(rv if isinstance(rv, int) and not isinstance(rv, bool) else 0)
