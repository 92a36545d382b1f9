"""attributes: tiny randomly initialised Whisper and ViT models saved locally and loaded through the
stage's weights paths; the output heads are crafted so that the expected labels are known, which
checks the plumbing (feature extraction, language-token logits, face crops, label mapping)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile as sf

from vividhead import weights
from vividhead.curation.config import ConfigError, config_from_dict
from vividhead.curation.ray_adapter import run_stage
from vividhead.curation.records import new_row
from vividhead.curation.stages.attributes import AttributesConfig, AttributesStage, WhisperLanguageId, normalise_label

torch = pytest.importorskip("torch")
from transformers import (  # noqa: E402
    GenerationConfig,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
)

CLIP = "talk_hdtf_katiehill_512.mp4"
LANGS = {"<|en|>": 10, "<|de|>": 11, "<|fr|>": 12, "<|zh|>": 13}


@pytest.fixture(scope="module")
def whisper_dir(tmp_path_factory):
    """Tiny random multilingual-style Whisper: 4 language tokens in generation_config.lang_to_id."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("whisper")
    cfg = WhisperConfig(
        vocab_size=32, num_mel_bins=80, d_model=16, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        max_source_positions=1500, max_target_positions=8, decoder_start_token_id=1, pad_token_id=0,
        bos_token_id=1, eos_token_id=2,
    )
    WhisperForConditionalGeneration(cfg).save_pretrained(path)
    GenerationConfig(decoder_start_token_id=1, lang_to_id=LANGS).save_pretrained(path)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(path)
    return path


def _vit_dir(root, labels: list[str], winner: int):
    torch.manual_seed(0)
    cfg = ViTConfig(
        image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    model = ViTForImageClassification(cfg)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
        model.classifier.bias[winner] = 5.0
    model.save_pretrained(root)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def vit_dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("vit")
    return {
        "gender": _vit_dir(base / "g", ["Female", "Male"], 0),
        "age": _vit_dir(base / "a", ["0-2", "3-9", "20-29", "more than 70"], 3),
        "ethnicity": _vit_dir(base / "e", ["White", "East Asian", "Latino_Hispanic"], 1),
    }


def _wav(path, seconds=3.0) -> bytes:
    pcm, sr = sf.read(path, dtype="int16")
    buf = io.BytesIO()
    sf.write(buf, pcm[: int(seconds * sr)], sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _stage(**kw) -> AttributesStage:
    stage = AttributesStage(AttributesConfig(**kw))
    stage.setup()
    return stage


def test_normalise_label():
    assert normalise_label("East Asian") == "east_asian"
    assert normalise_label("more than 70") == "70+"
    assert normalise_label("Man") == "male" and normalise_label("Female") == "female"
    assert normalise_label("20-29") == "20-29" and normalise_label("Latino_Hispanic") == "latino_hispanic"


def test_all_annotators_on_a_real_clip(whisper_dir, vit_dirs, video_dir, audio_dir):
    stage = _stage(
        language_weights_path=str(whisper_dir),
        gender_weights_path=str(vit_dirs["gender"]),
        age_weights_path=str(vit_dirs["age"]),
        ethnicity=True, ethnicity_weights_path=str(vit_dirs["ethnicity"]),
        face_frames=2,
    )
    row = new_row(video_bytes=(video_dir / CLIP).read_bytes(), audio_bytes=_wav(audio_dir / "speech_jfk_16k.wav"))
    out = run_stage(stage, row)[0]
    assert out["status"] == "kept" and out["annotation_errors"] is None
    assert (out["gender"], out["age_band"], out["ethnicity"]) == ("female", "70+", "east_asian")
    assert out["language"] in {"en", "de", "fr", "zh"}  # random weights: only the plumbing is checked


def test_language_is_the_argmax_over_language_tokens(whisper_dir, audio_dir):
    lid = WhisperLanguageId(whisper_dir)
    audio = sf.read(audio_dir / "speech_jfk_16k.wav", dtype="float32")[0][:16000]
    feats = lid.extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        lid.model.proj_out.weight.zero_()  # every token logit is 0 (proj_out has no bias) ...
        hidden = lid.model.model(input_features=feats, decoder_input_ids=torch.tensor([[1]])).last_hidden_state[0, -1]
        sign = 1.0 if float(hidden.sum()) > 0 else -1.0
        lid.model.proj_out.weight[LANGS["<|fr|>"], :] = sign  # ... except fr's, which is |sum(hidden)| > 0
    code, prob = lid(audio)
    assert code == "fr" and prob > 0.25
    with torch.no_grad():
        lid.model.proj_out.weight[LANGS["<|fr|>"], :] = -sign  # now fr is the least likely
    assert lid(audio)[0] != "fr"


def test_switches_and_failures_keep_the_clip(whisper_dir, vit_dirs, video_dir):
    stage = _stage(language_weights_path=str(whisper_dir), gender_weights_path=str(vit_dirs["gender"]), age=False)
    out = run_stage(stage, new_row(video_bytes=b"broken", audio_bytes=b"broken too"))[0]
    assert out["status"] == "kept"
    assert out["language"] is None and out["gender"] is None and out["age_band"] is None
    assert json.loads(out["annotation_errors"]) == {"language": "decode_failed", "gender": "decode_failed"}
    silent = io.BytesIO()
    sf.write(silent, np.zeros(4000, np.int16), 16000, format="WAV", subtype="PCM_16")
    out = run_stage(_stage(language_weights_path=str(whisper_dir), gender=False, age=False),
                    new_row(video_bytes=(video_dir / CLIP).read_bytes(), audio_bytes=silent.getvalue()))[0]
    assert json.loads(out["annotation_errors"]) == {"language": "audio_too_short"}


def test_weights_offline_and_config(monkeypatch, tmp_path):
    monkeypatch.setenv("VIVIDHEAD_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("VIVIDHEAD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    names = [n for n, _ in AttributesStage(AttributesConfig()).weights()]
    assert names == ["whisper_small", "face_gender_fairface_vit", "face_age_fairface_vit", "face_mediapipe_detector"]
    assert AttributesStage(AttributesConfig(language=False, gender=False, age=False)).weights() == []
    with pytest.raises(weights.WeightsNotFound, match="whisper-small"):
        weights.resolve("whisper_small", download=False)
    with pytest.raises(ConfigError, match="attributes.ethnicity_weights_path"):
        config_from_dict({"attributes": {"ethnicity": True}})
