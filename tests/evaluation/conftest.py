"""Shared fixtures of the evaluation tests: fixture videos decoded once, the face detector, models."""

from __future__ import annotations

import sys
from pathlib import Path

# ``tests/training/`` (no __init__) would shadow the real ``training`` package as a namespace package
# when pytest runs as ``.venv/bin/pytest`` (repo root not on sys.path); ``python -m pytest`` is fine.
_REPO = str(Path(__file__).resolve().parents[2])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import pytest  # noqa: E402

FIXTURES = (Path(__file__).resolve().parents[2] / ".." / "shared" / "fixtures").resolve()
VIDEO_DIR = FIXTURES / "media" / "video"
AUDIO_DIR = FIXTURES / "media" / "audio"
WEIGHTS_DIR = FIXTURES / "weights"
#: The talking-head fixtures with a face large enough to track (the two vertical full-body clips
#: have 170 px faces in 1080x1920 frames and are slow to decode; they add nothing here).
TALK_CLIPS = sorted(p.name for p in VIDEO_DIR.glob("talk_*.mp4") if "vertical" not in p.name)


@pytest.fixture(scope="session")
def clips():
    """``{name: Video}``: the first 3 s (75 frames at 25 fps) of every talking fixture, decoded once."""
    from vividhead.evaluation.frames import read_video

    return {name: read_video(VIDEO_DIR / name, max_frames=75) for name in TALK_CLIPS}


@pytest.fixture(scope="session")
def detector():
    from vividhead.models.face_detector import FaceDetector

    det = FaceDetector(WEIGHTS_DIR / "face_mediapipe_detector.tflite")
    yield det
    det.close()


@pytest.fixture(scope="session", autouse=True)
def _threads():
    """One torch thread: on the 2 shared cores, two OpenMP threads next to another busy process make
    Light-ASD's GRU backend about 70x slower (measured: 0.16 s -> 11.7 s per 3 s clip)."""
    import torch

    torch.set_num_threads(1)
