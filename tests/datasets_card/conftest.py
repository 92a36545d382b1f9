"""A small curation output (real 9-frame clips, varied synthetic scores) for the card and publish tests."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from vividhead.training.shard_builder import EncodedClip, encode_clip, write_output, write_stats

FIXTURES = Path(os.environ.get("VIVIDHEAD_FIXTURES", Path(__file__).resolve().parents[3] / "shared" / "fixtures"))

# (source_id, duration-free scores); every clip reuses one 9-frame encode of a fixture video.
KEPT = [
    ("spk_a", {"lse_c": 7.5, "lse_d": 7.0, "language": "en", "speech_share": 0.8, "face_px": 250.0}),
    ("spk_a", {"lse_c": 6.5, "lse_d": 7.4, "language": "en", "speech_share": 0.9, "face_px": 240.0}),
    ("spk_b", {"lse_c": 8.1, "lse_d": 6.9, "language": "de", "speech_share": 0.7, "face_px": 300.0}),
    ("spk_c", {"lse_c": None, "lse_d": None, "language": "zh", "speech_share": 0.6, "face_px": 210.0}),
    ("spk_d", {"lse_c": 5.2, "lse_d": 8.0, "language": "unknown lang", "speech_share": None, "face_px": 190.0}),
]
REJECTED = [
    {"input_id": "nature", "source_id": "nature", "stage": "face", "reason": "no_face"},
    {"input_id": "slides", "source_id": "slides", "stage": "face", "reason": "multiple_faces"},
    {"input_id": "spk_e", "source_id": "spk_e", "clip_id": "spk_e-0000", "stage": "syncnet",
     "reason": "lse_c_below_min", "lse_c": 1.2, "duration_s": 6.6},
    {"input_id": "spk_e", "source_id": "spk_e", "clip_id": "spk_e-0001", "stage": "syncnet",
     "reason": "lse_c_below_min", "lse_c": 0.4, "duration_s": 5.0},
]
STAGES = {  # written with sorted keys, as curation/pipeline.py does
    "probe": {"in": 8, "out": 7, "dropped": {"no_audio": 1}, "seconds": 0.5},
    "dedup": {"in": 7, "out": 6, "dropped": {"duplicate_md5": 1}, "seconds": 0.2},
    "scene_split": {"in": 6, "out": 9, "dropped": {}, "seconds": 3.25},
    "face": {"in": 9, "out": 7, "dropped": {"no_face": 1, "multiple_faces": 1}, "seconds": 4.0},
    "syncnet": {"in": 7, "out": 5, "dropped": {"lse_c_below_min": 2}, "seconds": 8.5},
}
CONFIG = {"segmentation": {"detector": "adaptive", "min_s": 5.0, "max_s": 50.0},
          "lipsync": {"min_lse_c": 3.0, "max_lse_d": 9.0}, "output": {"size": 512, "fps": 25}}


@pytest.fixture(scope="session")
def clip_bytes() -> tuple[bytes, bytes, int]:
    video = FIXTURES / "media" / "video" / "talk_retalking_face2.mp4"
    if shutil.which("ffmpeg") is None or not video.exists():
        pytest.skip(f"needs ffmpeg and {video}")
    return encode_clip(video, max_frames=9, gop=25)


@pytest.fixture
def out_dir(clip_bytes, tmp_path) -> Path:
    mp4, wav, n = clip_bytes
    clips = [EncodedClip(src, mp4, wav, n, scores) for src, scores in KEPT]
    out = write_output(tmp_path / "out", clips, clips_per_shard=2, rejected=REJECTED, wav2vec_shape=None)
    write_stats(out, STAGES, CONFIG, version="0.1.0", wall_s=5400.0)
    return out


@pytest.fixture(scope="session")
def carded_dir(clip_bytes, tmp_path_factory) -> Path:
    """A curation output with its card already written once (read-only for tests)."""
    from vividhead.datasets_card.card import write_card

    mp4, wav, n = clip_bytes
    clips = [EncodedClip(src, mp4, wav, n, scores) for src, scores in KEPT]
    out = write_output(tmp_path_factory.mktemp("carded") / "out", clips, clips_per_shard=2, rejected=REJECTED,
                       wav2vec_shape=None)
    write_stats(out, STAGES, CONFIG, version="0.1.0", wall_s=5400.0)
    write_card(out)
    return out
