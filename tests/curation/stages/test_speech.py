"""Speech stage: Silero VAD speech share, and the silent fixture rejected as ``no_speech``."""

from __future__ import annotations

import pytest
from avclips import AUDIO_DIR, VIDEO_DIR, WEIGHTS_DIR, clip_row, load_pcm16

from vividhead.curation.config import config_from_dict
from vividhead.curation.pipeline import build_stages
from vividhead.curation.ray_adapter import run_stage
from vividhead.curation.stage import Stage
from vividhead.curation.stages.normalize import NormalizeConfig, normalize_clip
from vividhead.curation.stages.speech import SpeechConfig, SpeechStage, load_vad, speech_share
from vividhead.errors import MediaError


@pytest.fixture(scope="module")
def vad():
    return load_vad()


def test_silent_clip_has_no_speech(vad):
    pcm = load_pcm16(VIDEO_DIR / "neg_silent_audio_expressions.mp4", 16000 * 11)
    assert not pcm.any()  # digital silence
    assert speech_share(pcm, 16000, vad, SpeechConfig()) == 0.0


def test_speech_shares_of_real_recordings(vad):
    jfk = load_pcm16(AUDIO_DIR / "speech_jfk_16k.wav", 16000 * 11)
    share = speech_share(jfk, 16000, vad, SpeechConfig())
    assert 0.6 < share < 0.85  # an address with pauses (MANIFEST: VAD 0.68 on 32 ms windows)
    onnx = load_vad(str(WEIGHTS_DIR / "vad_silero_v5.onnx"))
    assert speech_share(jfk, 16000, onnx, SpeechConfig()) == pytest.approx(share, abs=0.02)
    # Stricter threshold -> less speech.
    assert speech_share(jfk, 16000, vad, SpeechConfig(threshold=0.9)) < share
    with pytest.raises(ValueError):
        speech_share(jfk, 8000, vad, SpeechConfig())


def test_stage_keeps_a_talking_clip_and_rejects_the_silent_one():
    stage = SpeechStage(SpeechConfig())
    stage.setup()
    kept = run_stage(stage, dict(clip_row("talk_retalking_face3.mp4", 3.0)))[0]
    assert kept["status"] == "kept" and kept["speech_share"] > 0.7
    silent = run_stage(stage, dict(clip_row("neg_silent_audio_expressions.mp4", 3.0)))[0]
    assert (silent["status"], silent["stage"], silent["reason"]) == ("rejected", "speech", "no_speech")
    assert silent["speech_share"] == 0.0
    off = SpeechStage(SpeechConfig(min_speech_share=None))
    off.setup()
    assert run_stage(off, dict(clip_row("neg_silent_audio_expressions.mp4", 3.0)))[0]["status"] == "kept"


def test_normalize_rejects_the_silent_clip_first_unless_disabled():
    src = VIDEO_DIR / "neg_silent_audio_expressions.mp4"
    with pytest.raises(MediaError) as err:
        normalize_clip(src, 0.0, 50, NormalizeConfig())
    assert err.value.reason == "silent_audio"
    # With normalize's silence check off, the speech stage is what rejects the clip. Run the
    # configured per-clip stages after `normalize` in pipeline order (stages without offline weights off).
    cfg = config_from_dict({
        "normalize": {"reject_silent_audio": False},
        "occlusion": {"enabled": False},
        "syncnet": {"enabled": False},
        "asd": {"enabled": False},
    })
    stages = [s for s in build_stages(cfg) if isinstance(s, Stage)]
    names = [s.name for s in stages]
    # speech (audio only, cheap) runs before the frame stages
    assert names.index("normalize") < names.index("speech") < names.index("face_visibility") < names.index("asd")
    row = dict(clip_row("neg_silent_audio_expressions.mp4", 3.0))
    for stage in stages[names.index("normalize") + 1 :]:
        if stage.cfg.enabled and row["status"] == "kept":
            stage.setup()
            row = run_stage(stage, row)[0]
            stage.teardown()
    assert (row["status"], row["stage"], row["reason"]) == ("rejected", "speech", "no_speech")
