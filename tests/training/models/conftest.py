"""Test setup for training/models tests."""

from __future__ import annotations

import sys
from pathlib import Path

# ``tests/training/`` (no __init__) would shadow the real ``training`` package as a namespace package
# when pytest runs as ``.venv/bin/pytest`` (repo root not on sys.path); ``python -m pytest`` is fine.
_REPO = str(Path(__file__).resolve().parents[2])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)
