"""Shared test fixtures: paths into ../shared/fixtures, weights folder, one local Ray per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = (REPO / ".." / "shared" / "fixtures").resolve()
VIDEO_DIR = FIXTURES / "media" / "video"
AUDIO_DIR = FIXTURES / "media" / "audio"
IMAGE_DIR = FIXTURES / "media" / "image"
WEIGHTS_DIR = FIXTURES / "weights"

# Set before Ray starts so its workers inherit it.
os.environ.setdefault("VIVIDHEAD_WEIGHTS_DIR", str(WEIGHTS_DIR))
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# No test may reach the internet: weights and Hub models resolve from local paths only.
os.environ.setdefault("VIVIDHEAD_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

if not VIDEO_DIR.is_dir():  # pragma: no cover - CI always has ../shared
    pytest.exit(f"test fixtures not found at {FIXTURES} (clone with ../shared beside the repo)", returncode=2)


@pytest.fixture(scope="session")
def video_dir() -> Path:
    return VIDEO_DIR


@pytest.fixture(scope="session")
def audio_dir() -> Path:
    return AUDIO_DIR


@pytest.fixture(scope="session")
def image_dir() -> Path:
    return IMAGE_DIR


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    return WEIGHTS_DIR


@pytest.fixture(scope="session")
def ray_local():
    """One in-process local Ray for the whole session (2 CPUs, no dashboard)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()
