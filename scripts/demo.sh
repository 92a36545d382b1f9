#!/usr/bin/env bash
# Set up, fetch the public sample clips (or take them from $VIVIDHEAD_SAMPLES_DIR), and curate
# them into out/demo with the offline config. Ends with the run's summary table.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python examples/fetch_samples.py out/samples
.venv/bin/vividhead curate out/samples --output out/demo --config examples/curate_offline.yaml
