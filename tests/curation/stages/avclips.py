"""Clip rows built from fixture videos with the pipeline's own face and normalize stages.

Shared by the lip-sync, active-speaker and speech tests. Each clip is the first ``seconds`` of
the fixture at 25 fps, cropped 512x512 around the face, with 16 kHz mono PCM16 audio
(640 samples per frame), exactly as the ``normalize`` stage hands it to later stages.
"""

from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np
import soundfile as sf

from vividhead.curation.media import ffprobe
from vividhead.curation.records import new_row
from vividhead.curation.stages.face import FaceConfig, FaceStage
from vividhead.curation.stages.normalize import NormalizeConfig, NormalizeStage

FIXTURES = (Path(__file__).resolve().parents[3] / ".." / "shared" / "fixtures").resolve()
VIDEO_DIR = FIXTURES / "media" / "video"
AUDIO_DIR = FIXTURES / "media" / "audio"
WEIGHTS_DIR = FIXTURES / "weights"

TALK_CLIPS = sorted(p.name for p in VIDEO_DIR.glob("talk_*.mp4"))


@functools.cache
def clip_row(name: str, seconds: float = 3.0) -> dict:
    """A kept clip row (``video_bytes`` 512x512 face crop, ``audio_bytes`` WAV) for a fixture video."""
    src = VIDEO_DIR / name
    duration = float(ffprobe(src)["format"]["duration"])
    frames = int(min(duration - 0.1, seconds) * 25)
    row = new_row(input_id=name, source_id=name, local_path=str(src), start_s=0.0, num_frames=frames)
    face = FaceStage(FaceConfig(weights_path=str(WEIGHTS_DIR / "face_mediapipe_detector.tflite")))
    face.setup()
    try:
        row = face.process(row)[0]
    finally:
        # A MediaPipe detector left to the garbage collector at interpreter exit can block pytest's
        # shutdown (its __del__ waits on a dispatcher that is already gone): tests tear stages down.
        face.teardown()
    return NormalizeStage(NormalizeConfig(reject_silent_audio=False)).process(row)[0]


def wav_bytes(pcm: np.ndarray, sr: int = 16000) -> bytes:
    """int16 [N] -> WAV bytes (PCM16 mono)."""
    buf = io.BytesIO()
    sf.write(buf, np.asarray(pcm, np.int16), sr, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def pcm_of(row: dict) -> np.ndarray:
    """int16 [N] samples of a clip row's audio."""
    return sf.read(io.BytesIO(row["audio_bytes"]), dtype="int16")[0]


def load_pcm16(path: Path, n: int) -> np.ndarray:
    """First ``n`` samples of an audio file as 16 kHz mono int16 (zero-padded), via FFmpeg."""
    import subprocess

    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-ac", "1", "-ar", "16000", "-f", "s16le", "-"],
                         capture_output=True, check=True).stdout
    pcm = np.frombuffer(out, np.int16)[:n]
    return np.pad(pcm, (0, n - len(pcm)))
