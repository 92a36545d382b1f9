from __future__ import annotations

import io

import av
import numpy as np
import pytest
import soundfile as sf

from vividhead.curation.stages.normalize import NormalizeConfig, normalize_clip
from vividhead.errors import MediaError


def test_vfr_source_becomes_cfr_25fps_with_sample_accurate_audio(video_dir):
    clip = normalize_clip(video_dir / "talk_retalking_face1.mp4", 0.5, 121, NormalizeConfig())
    with av.open(io.BytesIO(clip.video)) as c:
        stream = c.streams.video[0]
        frames = list(c.decode(video=0))
        pts = [f.time for f in frames]
    assert len(frames) == 121 and stream.average_rate == 25
    assert np.allclose(np.diff(pts), 1 / 25, atol=1e-3)  # constant frame rate
    samples, sr = sf.read(io.BytesIO(clip.audio), dtype="int16")
    assert sr == 16000 and samples.ndim == 1 and len(samples) == 640 * 121
    assert clip.audio_peak_dbfs > -30


def test_stereo_44k_is_downmixed_and_resampled(video_dir):
    clip = normalize_clip(video_dir / "talk_retalking_face4.mp4", 0.0, 125, NormalizeConfig())
    info = sf.info(io.BytesIO(clip.audio))
    assert (info.samplerate, info.channels, info.frames) == (16000, 1, 125 * 640)


def test_digital_silence_is_rejected(video_dir):
    with pytest.raises(MediaError) as err:
        normalize_clip(video_dir / "neg_silent_audio_expressions.mp4", 0.0, 125, NormalizeConfig())
    assert err.value.reason == "silent_audio"
    kept = normalize_clip(video_dir / "neg_silent_audio_expressions.mp4", 0.0, 125, NormalizeConfig(reject_silent_audio=False))
    assert kept.audio_peak_dbfs == float("-inf")


def test_source_ending_early_is_rejected(video_dir):
    with pytest.raises(MediaError) as err:
        normalize_clip(video_dir / "talk_retalking_face2.mp4", 3.0, 125, NormalizeConfig())
    assert err.value.reason == "too_few_frames"
