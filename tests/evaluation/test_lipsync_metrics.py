"""Light-ASD and Sync-C/Sync-D per video on the real talking-head fixtures.

Light-ASD runs with the real checkpoints from the fixtures, so its numbers are real: on the first
3 s of every talking fixture, each face with its own audio scores higher on average than with the
next clip's audio (real speech of another person) and than with digital silence. SyncNet's weights
are not available here: its tests use seeded random weights and check the plumbing only (same code
as the curation filter, determinism, windowed scores), never a score.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TALK_CLIPS, WEIGHTS_DIR

from vividhead.curation.models.lightasd import load_lightasd
from vividhead.curation.models.syncnet import SyncNet
from vividhead.curation.stages.syncnet import lipsync_from_crops
from vividhead.errors import MediaError
from vividhead.evaluation.asd_score import asd_metric, asd_visual
from vividhead.evaluation.faces import face_crops
from vividhead.evaluation.frames import fit_audio, to_pcm16
from vividhead.evaluation.sync import sync_distances, sync_metrics, window_sync

CHECKPOINTS = ("asd_lightasd_pretrain_AVA.model", "asd_lightasd_finetuning_TalkSet.model")


@pytest.fixture(scope="module")
def faces(clips, detector):
    """{name: FaceCrops} of the first 3 s of each talking fixture."""
    return {name: face_crops(v.frames, detector, keep_bgr=False) for name, v in clips.items()}


@pytest.mark.parametrize("checkpoint", CHECKPOINTS)
def test_light_asd_own_audio_beats_swapped_audio_and_silence(checkpoint, clips, faces, capsys):
    model = load_lightasd(WEIGHTS_DIR / checkpoint)
    names = list(TALK_CLIPS)
    audio = {n: fit_audio(clips[n].audio, len(clips[n].frames)) for n in names}
    table = []
    for i, name in enumerate(names):
        vis = asd_visual(faces[name].gray112, model)
        own = asd_metric(vis, audio[name], model).score
        swapped = asd_metric(vis, audio[names[(i + 1) % len(names)]], model).score
        silence = asd_metric(vis, np.zeros_like(audio[name]), model).score
        table.append((own, swapped, silence))
        if i == 0:  # identical inputs give identical scores
            assert asd_metric(asd_visual(faces[name].gray112, model), audio[name], model).score == own
    t = np.array(table)
    with capsys.disabled():
        print(f"\nLight-ASD {checkpoint}, first 3 s, mean logit: own / next clip's audio / silence")
        for name, row in zip(names, t):
            print(f"  {name:32s} " + " ".join(f"{x:6.2f}" for x in row))
        print(f"  {'mean':32s} " + " ".join(f"{x:6.2f}" for x in t.mean(0)))
    own, swapped, silence = t.mean(0)
    assert own > swapped and own > silence, t.mean(0)


def test_faces_follow_the_curation_track(clips, detector):
    """The evaluation's crops are the curation filter's (same track on decoded frames as on bytes)."""
    from vividhead.curation.face_track import crop_frames, track_frames

    frames = clips["talk_hdtf_aoc_512.mp4"].frames[:30]
    fc = face_crops(frames, detector)
    track = track_frames(frames, detector)
    np.testing.assert_array_equal(fc.track.s, track.s)
    np.testing.assert_array_equal(fc.bgr224, crop_frames(frames, track))
    gray = crop_frames(frames, track, gray=True)[:, 56:168, 56:168]
    assert np.abs(fc.gray112.astype(int) - gray.astype(int)).max() <= 1  # BGR->gray vs RGB->gray rounding


def test_sync_metrics_are_the_curation_code_and_deterministic(clips, detector):
    """Random SyncNet weights: plumbing only, no score is claimed."""
    torch.manual_seed(0)
    model = SyncNet().eval()
    v = clips["talk_retalking_face3.mp4"]
    frames = v.frames[:30]
    audio = fit_audio(v.audio, 30)
    fc = face_crops(frames, detector)
    a = sync_metrics(fc.bgr224, audio, model)
    b = lipsync_from_crops(fc.bgr224, to_pcm16(audio), model)
    assert (a.lse_c, a.lse_d, a.av_offset_frames) == (b.lse_c, b.lse_d, b.av_offset_frames)
    assert sync_metrics(fc.bgr224, audio, model).lse_c == a.lse_c
    assert a.num_windows == 25 and a.mean_dists.shape == (31,)
    d = sync_distances(fc.bgr224, audio, model)
    whole = window_sync(d, 0, 30)
    assert whole.lse_d == pytest.approx(a.lse_d) and whole.lse_c == pytest.approx(a.lse_c)
    part = window_sync(d, 10, 20)
    assert part.num_windows == 10
    assert window_sync(d, 40, 50) is None
    with pytest.raises(MediaError, match="too_short"):
        sync_metrics(fc.bgr224[:5], audio, model)


def test_no_face_is_a_recorded_reason(detector):
    noise = np.random.default_rng(0).integers(0, 255, (12, 64, 64, 3), dtype=np.uint8)
    with pytest.raises(MediaError) as exc:
        face_crops(noise, detector)
    assert exc.value.reason == "no_face_track"
