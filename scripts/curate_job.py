"""``ray submit ray_cluster.yaml scripts/curate_job.py INPUT... --output OUT [--config ...]``.

``ray submit`` copies this file to the head node and runs it there with the cluster's Python, outside
a Ray job, so ``$RAY_ADDRESS`` is unset: default it to ``auto`` to join the running cluster instead of
starting a second, local Ray. Everything else is ``python -m vividhead.curation``.
"""

import os

from vividhead.curation.cli import curate_main

if __name__ == "__main__":
    os.environ.setdefault("RAY_ADDRESS", "auto")
    curate_main()
