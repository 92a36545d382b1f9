"""audio_features: a tiny random Wav2Vec2 saved with save_pretrained and loaded through the stage's
weights path, on real speech; shape, dtype and frame alignment of ``<key>.wav2vec.npy``."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile as sf

from vividhead import weights
from vividhead.curation.ray_adapter import run_stage
from vividhead.curation.records import members_of, new_row
from vividhead.curation.stages.audio_features import MEMBER, AudioFeaturesConfig, AudioFeaturesStage

torch = pytest.importorskip("torch")
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC, Wav2Vec2Model  # noqa: E402

from vividhead.models.audio_encoder import TINY_WAV2VEC_KWARGS, Wav2VecFeatures  # noqa: E402

FRAMES = 50  # 2 s at 25 fps


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w2v")
    Wav2Vec2Model(Wav2Vec2Config(**TINY_WAV2VEC_KWARGS)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def speech(audio_dir):
    pcm, sr = sf.read(audio_dir / "speech_jfk_16k.wav", dtype="int16")
    assert sr == 16000
    return pcm[: 640 * FRAMES]


def _wav(pcm: np.ndarray, sr: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, pcm, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _stage(path) -> AudioFeaturesStage:
    stage = AudioFeaturesStage(AudioFeaturesConfig(weights_path=str(path)))
    stage.setup()
    return stage


def test_features_member_shape_dtype_and_values(tiny_dir, speech):
    stage = _stage(tiny_dir)
    out = run_stage(stage, new_row(audio_bytes=_wav(speech), num_frames=FRAMES))[0]
    assert out["status"] == "kept" and out["annotation_errors"] is None
    feats = np.load(io.BytesIO(members_of(out)[MEMBER]), allow_pickle=False)
    assert feats.shape == (FRAMES, 2, 16) and feats.dtype == np.float16  # [T, L, D]
    assert np.isfinite(feats).all() and feats.std() > 0
    # Same numbers as the model side's encoder (training reads these as its audio condition).
    ref = Wav2VecFeatures.from_pretrained(tiny_dir)(torch.from_numpy(speech.astype(np.float32) / 32768.0)[None], FRAMES)
    assert np.allclose(feats.astype(np.float32), ref[0].numpy(), atol=2e-2)


def test_rows_follow_video_frames(tiny_dir, speech):
    stage = _stage(tiny_dir)
    out = run_stage(stage, new_row(audio_bytes=_wav(speech[: 640 * 30])))[0]  # no num_frames: from audio
    assert np.load(io.BytesIO(members_of(out)[MEMBER])).shape[0] == 30
    # num_frames (from normalize) wins over the audio length: one row per video frame.
    out = run_stage(stage, new_row(audio_bytes=_wav(speech[: 640 * 30]), num_frames=31))[0]
    assert np.load(io.BytesIO(members_of(out)[MEMBER])).shape[0] == 31


def test_ctc_checkpoint_loads_like_base_960h(tmp_path, speech):
    torch.manual_seed(0)
    Wav2Vec2ForCTC(Wav2Vec2Config(**TINY_WAV2VEC_KWARGS, vocab_size=32)).save_pretrained(tmp_path)
    out = run_stage(_stage(tmp_path), new_row(audio_bytes=_wav(speech), num_frames=FRAMES))[0]
    assert np.load(io.BytesIO(members_of(out)[MEMBER])).shape == (FRAMES, 2, 16)


@pytest.mark.parametrize("audio, reason", [(b"not audio", "decode_failed"), (None, "too_short")])
def test_bad_audio_keeps_the_clip_with_a_reason(tiny_dir, audio, reason):
    if audio is None:
        audio = _wav(np.zeros(100, np.int16))
    out = run_stage(_stage(tiny_dir), new_row(audio_bytes=audio, num_frames=FRAMES))[0]
    assert out["status"] == "kept" and MEMBER not in members_of(out)
    assert reason in json.loads(out["annotation_errors"])["audio_features"]


def test_default_model_is_registered_and_missing_offline_names_it(monkeypatch, tmp_path):
    monkeypatch.setenv("VIVIDHEAD_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("VIVIDHEAD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    stage = AudioFeaturesStage(AudioFeaturesConfig())
    assert stage.weights() == [("wav2vec2_base_960h", None)]
    assert weights.REGISTRY["wav2vec2_base_960h"].url == "hf://facebook/wav2vec2-base-960h"
    with pytest.raises(weights.WeightsNotFound, match="wav2vec2-base-960h"):
        weights.resolve("wav2vec2_base_960h", download=False)
    # A folder in $VIVIDHEAD_WEIGHTS_DIR named like the entry is found offline.
    Wav2Vec2Model(Wav2Vec2Config(**TINY_WAV2VEC_KWARGS)).save_pretrained(tmp_path / "wav2vec2-base-960h")
    assert weights.resolve("wav2vec2_base_960h", download=False) == tmp_path / "wav2vec2-base-960h"
