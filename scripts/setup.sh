#!/usr/bin/env bash
# Set up a fresh machine: FFmpeg from apt, a virtualenv in .venv, torch 2.13.0 first (pinned for
# every later install through PIP_CONSTRAINT), then this package with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ffmpeg >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
echo "torch==2.13.0" > .venv/constraints.txt
export PIP_CONSTRAINT="$PWD/.venv/constraints.txt"
.venv/bin/python -m pip install -q -e ".[curation,train,serve,test]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, ray, scenedetect, mediapipe, webdataset; assert torch.__version__.startswith('2.13.0'), torch.__version__"
