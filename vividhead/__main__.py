"""``python -m vividhead ...`` is the ``vividhead`` command."""

from vividhead.cli import main

if __name__ == "__main__":  # spawned worker processes (serve's MP4 encoders) must not run the CLI again
    main()
