from __future__ import annotations

import pytest

from vividhead.curation import weights


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
