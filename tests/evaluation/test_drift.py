"""Drift metrics on a real clip degraded a little more every second, as a collapsing generation would."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from conftest import VIDEO_DIR, WEIGHTS_DIR

from vividhead.curation.models.lightasd import load_lightasd
from vividhead.curation.models.syncnet import SyncNet
from vividhead.evaluation.drift import drift_metrics, fit_reference, plot_drift, window_bounds
from vividhead.evaluation.frames import read_video

WINDOW_S = 0.6


@pytest.fixture(scope="module")
def degraded():
    """3.6 s of talk_hdtf_aoc_512.mp4 in six 0.6 s windows; window k (k = 0..5) blurred with sigma
    0.6 k and tinted +6 k in red and -6 k in blue. Returns (frames, audio, reference image = the
    clean first frame)."""
    v = read_video(VIDEO_DIR / "talk_hdtf_aoc_512.mp4", max_frames=90)
    out = v.frames.copy()
    for k, (a, b) in enumerate(window_bounds(len(out), WINDOW_S)):
        for i in range(a, b):
            f = cv2.GaussianBlur(out[i], (0, 0), 0.6 * k) if k else out[i]
            f = f.astype(np.int16) + np.array([6 * k, 0, -6 * k], np.int16)
            out[i] = np.clip(f, 0, 255).astype(np.uint8)
    return out, v.audio, v.frames[0]


def test_drift_curves_follow_the_degradation(degraded, detector, tmp_path):
    frames, audio, ref = degraded
    asd = load_lightasd(WEIGHTS_DIR / "asd_lightasd_pretrain_AVA.model")
    torch.manual_seed(0)
    norms = np.linspace(1.0, 2.0, len(frames)).astype(np.float32)
    rows = drift_metrics(frames, audio, ref, window_s=WINDOW_S, asd_model=asd, syncnet=SyncNet().eval(),
                         detector=detector, latent_norms=norms)
    assert [r["window"] for r in rows] == list(range(6)) and all(r["num_frames"] == 15 for r in rows)
    de = [r["color_delta_e"] for r in rows]
    sharp = [r["sharpness_ratio"] for r in rows]
    assert all(x < y for x, y in zip(de, de[1:])), de
    assert all(x > y for x, y in zip(sharp[1:], sharp[2:])), sharp  # blur grows from second 1 on
    assert sharp[-1] < 0.5 * sharp[0]
    assert 0.5 < sharp[0] < 2.0 and de[0] < 5.0  # the clean second is close to its own first frame
    assert all(r["asd_score"] is not None for r in rows)
    assert all(r["sync_c"] is not None for r in rows[:-1])  # random SyncNet: present, not judged
    assert [round(r["latent_norm"], 3) for r in rows] == sorted(round(r["latent_norm"], 3) for r in rows)
    # the same call gives the same rows
    again = drift_metrics(frames, audio, ref, window_s=WINDOW_S, asd_model=asd, detector=detector)
    assert [r["asd_score"] for r in again] == [r["asd_score"] for r in rows]
    png = plot_drift(rows, tmp_path / "drift.png", title="test", not_real=("sync_c", "sync_d"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_without_face_models_and_bad_inputs(degraded):
    frames, _, ref = degraded
    rows = drift_metrics(frames[:25], None, ref, window_s=0.4)
    assert len(rows) == 3 and [r["num_frames"] for r in rows] == [10, 10, 5]
    assert "asd_score" not in rows[0] and "sync_c" not in rows[0]
    with pytest.raises(ValueError, match="uint8"):
        drift_metrics(frames[:4].astype(np.float32), None, ref)
    with pytest.raises(ValueError, match="latent_norms"):
        drift_metrics(frames[:4], None, ref, latent_norms=np.zeros(3))
    with pytest.raises(ValueError, match="detector"):
        drift_metrics(frames[:4], None, ref, asd_model=object())


def test_reference_is_fitted_like_the_generator():
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, 50:150] = 255  # the centre square is white
    out = fit_reference(img, 32, 32)
    assert out.shape == (32, 32, 3) and out.min() == 255
