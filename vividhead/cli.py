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
Unexpected exceptions always show their traceback. ``vividhead --version`` prints the version.
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
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines) or type(exc).__name__


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point of the ``vividhead`` script (``argv`` defaults to ``sys.argv[1:]``).

    Raises:
        SystemExit: always (click's standalone mode); code 2 after an expected error's one line.
    """
    global _debug
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _debug = _env_debug()
    try:
        build_app()(args=argv, prog_name="vividhead")
    except UserError as exc:
        if _debug:
            raise
        # Printed here, not by sys.excepthook: torch.distributed prefixes every traceback line with
        # ``[rankN]:`` once a process group exists, and the trainers create one even on one process.
        sys.stderr.flush()
        print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
        raise SystemExit(getattr(exc, "exit_code", 2)) from None
