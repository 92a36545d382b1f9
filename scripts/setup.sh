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
# pip's and setuptools' chatter goes to .venv/install.log; a failed install prints its tail and stops here.
pip_install() {
  if ! .venv/bin/python -m pip install -q "$@" >> .venv/install.log 2>&1; then
    echo "pip install $* failed; the end of .venv/install.log:" >&2
    tail -n 40 .venv/install.log >&2
    exit 1
  fi
}
: > .venv/install.log
echo "installing into .venv (pip output: .venv/install.log)"
pip_install --upgrade pip
pip_install "torch==2.13.0"
echo "torch==2.13.0" > .venv/constraints.txt
export PIP_CONSTRAINT="$PWD/.venv/constraints.txt"
pip_install -e ".[curation,train,serve,test]"
.venv/bin/python -c "import torch, ray, scenedetect, mediapipe, webdataset; assert torch.__version__.startswith('2.13.0'), torch.__version__"
