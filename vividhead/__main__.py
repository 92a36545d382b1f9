"""``python -m vividhead ...`` is the ``vividhead`` command."""

from vividhead.cli import main

main()
