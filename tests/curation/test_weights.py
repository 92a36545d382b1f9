from __future__ import annotations

import re

import pytest

from vividhead import weights


def test_resolution_order(tmp_path, monkeypatch, weights_dir):
    monkeypatch.setenv("VIVIDHEAD_WEIGHTS_DIR", str(weights_dir))
    monkeypatch.setenv("VIVIDHEAD_CACHE", str(tmp_path / "cache"))
    found = weights.resolve("face_mediapipe_detector", download=False)
    assert found == weights_dir / "face_mediapipe_detector.tflite"
    assert weights.sha256_of(found) == weights.REGISTRY["face_mediapipe_detector"].sha256
    explicit = tmp_path / "mine.tflite"
    explicit.write_bytes(b"x")
    assert weights.resolve("face_mediapipe_detector", str(explicit)) == explicit
    with pytest.raises(weights.WeightsNotFound, match="does not exist"):
        weights.resolve("face_mediapipe_detector", str(tmp_path / "missing.tflite"))


def test_offline_without_weights_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("VIVIDHEAD_WEIGHTS_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("VIVIDHEAD_CACHE", str(tmp_path / "cache"))
    spec = weights.REGISTRY["face_mediapipe_detector"]
    monkeypatch.setitem(weights.REGISTRY, spec.name, weights.WeightSpec(**{**spec.__dict__, "url": "http://127.0.0.1:9/x.tflite"}))
    with pytest.raises(weights.WeightsNotFound) as err:
        weights.resolve(spec.name)
    assert "face_mediapipe_detector.tflite" in str(err.value) and "VIVIDHEAD_WEIGHTS_DIR" in str(err.value)
    assert not any((tmp_path / "cache").rglob("*.tflite"))  # nothing half-downloaded is left


def _fake_hub(monkeypatch, tmp_path):
    """Replace ``huggingface_hub.snapshot_download``: nothing is in the local cache, a download works."""
    import huggingface_hub

    calls = []

    def snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        if kwargs.get("local_files_only"):
            raise FileNotFoundError("not in the local Hugging Face cache")
        return str(tmp_path / "downloaded")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setenv("VIVIDHEAD_WEIGHTS_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("VIVIDHEAD_CACHE", str(tmp_path / "cache"))
    return calls


def test_offline_means_no_hub_download(monkeypatch, tmp_path):
    calls = _fake_hub(monkeypatch, tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # VIVIDHEAD_OFFLINE alone must be enough
    monkeypatch.setenv("VIVIDHEAD_OFFLINE", "1")
    with pytest.raises(weights.WeightsNotFound, match="whisper-small not found offline"):
        weights.resolve("whisper_small")  # download=True by default
    spec = weights.REGISTRY["whisper_small"]
    assert calls == [("openai/whisper-small", {"revision": spec.revision, "local_files_only": True})]


def test_online_hub_download_is_pinned(monkeypatch, tmp_path):
    calls = _fake_hub(monkeypatch, tmp_path)
    monkeypatch.setenv("VIVIDHEAD_OFFLINE", "0")
    assert weights.resolve("wav2vec2_base_960h") == tmp_path / "downloaded"
    assert [kw.get("local_files_only", False) for _, kw in calls] == [True, False]
    assert {kw["revision"] for _, kw in calls} == {"22aad52d435eb6dbaf354bdad9b0da84ce7d6156"}
    calls.clear()
    with pytest.raises(weights.WeightsNotFound, match="not found offline"):
        weights.resolve("wav2vec2_base_960h", download=False)
    assert [kw["local_files_only"] for _, kw in calls] == [True]


def test_hub_entries_pin_a_revision():
    hub = {n: s for n, s in weights.REGISTRY.items() if s.url.startswith("hf://")}
    pinned = {n for n, s in hub.items() if s.revision is not None}
    for name in pinned:
        assert re.fullmatch(r"[0-9a-f]{40}|v?\d+(\.\d+)*", hub[name].revision), name
    # No commit of these two repositories could be checked offline; a new Hub entry must pin one.
    assert set(hub) - pinned == {"face_gender_fairface_vit", "face_age_fairface_vit"}
    assert all(s.revision is None for s in weights.REGISTRY.values() if not s.url.startswith("hf://"))
