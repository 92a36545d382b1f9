"""Media reading (25 fps conversion, audio), sampling helpers and the seeded test split."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import VIDEO_DIR

from vividhead.evaluation.frames import (
    _cfr_indices,
    clip_starts,
    fid_frame_indices,
    fit_audio,
    pair_names,
    read_video,
    to_pcm16,
)
from vividhead.evaluation.split import TestSplit, make_test_split


def test_frame_rate_conversion_by_timestamp():
    assert list(_cfr_indices(np.arange(10) / 25.0)) == list(range(10))  # 25 fps: identity
    assert list(_cfr_indices(np.arange(12) / 30.0)) == [0, 1, 3, 4, 5, 6, 7, 9, 10, 11]  # 30 -> 25 drops 1 in 6
    assert list(_cfr_indices(np.arange(5) / 12.5)) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]  # 12.5 -> 25 repeats


def test_read_video_30fps_and_vfr(clips):
    v = read_video(VIDEO_DIR / "talk_retalking_face4.mp4")  # 199 frames at 30 fps, 6.63 s
    assert v.source_fps == pytest.approx(30.0, abs=0.01)
    assert len(v.frames) == 166 and v.frames.dtype == np.uint8 and v.frames.shape[1:] == (700, 700, 3)
    assert abs(len(v.audio) / 16000 - 6.63) < 0.05 and v.audio.dtype == np.float32
    vfr = clips["talk_retalking_face1.mp4"]  # VFR, about 22 fps on average
    assert len(vfr.frames) == 75 and 21 < vfr.source_fps < 23


def test_audio_helpers():
    a = np.array([0.0, 0.5, -1.0, 1.0], np.float32)
    assert list(to_pcm16(a)) == [0, 16384, -32768, 32767]
    assert fit_audio(None, 2).shape == (1280,) and fit_audio(np.ones(10, np.float32), 1)[9:].sum() == 1


def test_sampling():
    assert list(fid_frame_indices(7, 3)) == [0, 3, 6]
    assert list(clip_starts(50, 16)) == [0, 16, 32]
    assert list(clip_starts(50, 16, 8)) == [0, 8, 16, 24, 32]
    assert len(clip_starts(15, 16)) == 0
    with pytest.raises(ValueError):
        fid_frame_indices(5, 0)


def test_pairing():
    both, g_only, r_only = pair_names({"a": None, "b": None, "x": None}, {"b": None, "a": None, "y": None})
    assert (both, g_only, r_only) == (["a", "b"], ["x"], ["y"])


def _clips(n_sources: int, per_source: int) -> list[tuple[str, str]]:
    return [(f"src{s:03d}-{c:04d}", f"src{s:03d}") for s in range(n_sources) for c in range(per_source)]


def test_split_holds_out_whole_sources_and_is_seeded(tmp_path):
    clips = _clips(100, 4)
    s = make_test_split(clips, 75, seed=0)
    assert len(s.test_keys) == 75 and len(set(s.test_keys)) == 75
    assert len(s.test_groups) == 75  # enough sources: one clip from each of 75 sources
    assert {k.split("-")[0] for k in s.test_keys} == set(s.test_groups)
    assert set(s.train_exclude_keys) == {k for k, g in clips if g in s.test_groups}  # every clip of them
    train = [k for k, _ in clips if k not in set(s.train_exclude_keys)]
    assert not {k.split("-")[0] for k in train} & set(s.test_groups)  # no source leaks
    assert make_test_split(list(reversed(clips)), 75, seed=0) == s  # input order does not matter
    assert make_test_split(clips, 75, seed=1).test_keys != s.test_keys
    # Adding sources keeps the held-out sources that still rank first (hash ranking, no reshuffle).
    grown = make_test_split(clips + _clips(110, 4)[400:], 75, seed=0)
    assert len(set(grown.test_groups) & set(s.test_groups)) > 60
    assert TestSplit.from_json(s.to_json(tmp_path / "split.json")) == s


def test_split_with_few_sources_takes_several_clips_each():
    s = make_test_split(_clips(3, 5), 7, seed=0)
    assert len(s.test_keys) == 7 and len(s.test_groups) == 3
    assert len(s.train_exclude_keys) == 15
    assert len(make_test_split(_clips(2, 2), 75).test_keys) == 4  # fewer clips than asked: all of them
    with pytest.raises(ValueError):
        make_test_split([("a", "x"), ("a", "y")], 1)
