"""``python -m vividhead.curation INPUT... --output OUT`` is ``vividhead curate`` (works under ``ray job submit``)."""

from vividhead.curation.cli import curate_main

if __name__ == "__main__":
    curate_main()
