"""The ``vividhead`` command line. Each part registers its own subcommands:

* ``curate``             -- :mod:`vividhead.curation.cli`
* ``card``, ``publish``  -- :mod:`vividhead.datasets_card.cli`
* ``infer``, ``serve``   -- :mod:`vividhead.inference.cli`
* ``train ...``          -- :mod:`vividhead.training.cli`
* ``eval ...``           -- :mod:`vividhead.evaluation.cli`

A part whose optional dependencies are not installed (``pip install vividhead[curation]`` etc.)
still shows its commands; running one prints which extra to install.
"""

from __future__ import annotations

import importlib
import logging

import typer

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
    def _root() -> None:
        """vividhead: curate, train, evaluate and serve streaming talking-head models."""

    for module, _extra in SUBCOMMAND_MODULES:
        importlib.import_module(module).register(app)
    return app


def main() -> None:
    """Entry point of the ``vividhead`` script."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    build_app()()
